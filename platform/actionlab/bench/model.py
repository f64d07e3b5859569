"""`actionlab bench`: forward throughput of a workload at several settings, side by side.

The first setting is the baseline, measured in the same process right before the others, so a
speed-up is read off one table on one machine state (never from a timed test).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .. import flops


@dataclass(frozen=True)
class BenchRow:
    setting: str
    clips_per_s: float
    ms_per_batch: float
    gmacs: float
    speedup: float
    mfu: float | None = None  # model FLOPs utilisation (training on a GPU of known peak)


def parse_sweep(text: str) -> tuple[str, list]:
    """`drop_rate=0,0.25,0.5` -> ("drop_rate", [0, 0.25, 0.5]) with YAML-typed values."""
    import yaml

    if "=" not in text:
        raise ValueError(f"--sweep {text!r} must look like PARAM=V1,V2,... (e.g. drop_rate=0,0.5)")
    key, raw = text.split("=", 1)
    values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--sweep {text!r} has no values")
    return key.strip(), values


def _time_forward(model, clips, *, iters: int, warmup: int) -> list[float]:
    times = []
    sync = torch.cuda.synchronize if clips.is_cuda else (lambda: None)
    with torch.inference_mode():
        for i in range(warmup + iters):
            sync()
            start = time.perf_counter()
            model(clips)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by a substring of the device name.
PEAK_BF16_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
                   ("A10G", 70e12), ("A10", 125e12), ("V100", 125e12), ("T4", 65e12))


def peak_bf16_flops(device: torch.device) -> float | None:
    """The detected GPU's dense bf16 peak, or None (CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def _time_train_step(model, clips, labels, optimizer, *, iters: int, warmup: int, amp: bool) -> list[float]:
    import torch.nn.functional as F

    times = []
    sync = torch.cuda.synchronize if clips.is_cuda else (lambda: None)
    for i in range(warmup + iters):
        sync()
        start = time.perf_counter()
        with torch.autocast(device_type=clips.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(clips).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def bench(
    workload: str,
    *,
    params: dict,
    sweep: tuple[str, list] | None,
    num_frames: int,
    size_px: int,
    num_classes: int = 400,
    batch_size: int = 2,
    iters: int = 5,
    warmup: int = 2,
    threads: int = 0,
    train: bool = False,
    device: str = "cpu",
    amp: bool = True,
    channels_last: bool = False,
    compile: bool = False,
) -> list[BenchRow]:
    """Clips/s (median over `iters`) of `workload` for each value of the swept param.

    `train=True` times a whole training step (forward, backward, fused AdamW) instead of a forward,
    with bf16 autocast when `amp` (GPU), and reports MFU = 6 x GMACs x clips/s / the device's bf16 peak.
    """
    from workloads import get_workload

    if threads:
        torch.set_num_threads(threads)
    spec = get_workload(workload)
    settings = [(f"{sweep[0]}={v}", {**params, sweep[0]: v}) for v in sweep[1]] if sweep else [("as given", params)]
    dev = torch.device(device)
    torch.manual_seed(0)
    frames = spec.input_for(params, num_frames=num_frames).clip_frames  # T: frames, or segments x snippet frames
    clips = torch.randn(batch_size, frames, 3, size_px, size_px, device=dev)  # (B, T, C, H, W)
    if channels_last:
        clips = clips.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(clips.shape)
    labels = torch.randint(0, num_classes, (batch_size,), device=dev)
    peak = peak_bf16_flops(dev)
    rows: list[BenchRow] = []
    for label, p in settings:
        model = spec.build(p, num_classes=num_classes, num_frames=num_frames, weights=False)  # timing needs no weights
        compute = flops.measure(model, (1, frames, 3, size_px, size_px))
        model = model.to(dev, memory_format=torch.channels_last) if channels_last else model.to(dev)
        runner = torch.compile(model) if compile else model
        if train:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
            times = _time_train_step(runner.train(), clips, labels, optimizer, iters=iters, warmup=warmup,
                                     amp=amp and dev.type == "cuda")
        else:
            times = _time_forward(runner.eval(), clips, iters=iters, warmup=warmup)
        ms = statistics.median(times) * 1e3
        rate = batch_size / (ms / 1e3)
        base = rows[0].clips_per_s if rows else rate
        mfu = 6 * compute.gmacs * 1e9 * rate / peak if (peak and train) else None
        rows.append(BenchRow(setting=label, clips_per_s=rate, ms_per_batch=ms, gmacs=compute.gmacs,
                             speedup=rate / base, mfu=mfu))
    return rows
