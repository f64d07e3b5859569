"""`actionlab bench`: forward throughput of a workload at several settings, side by side.

The first setting is the baseline, measured in the same process right before the others, so a
speed-up is read off one table on one machine state (never from a timed test).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from . import flops


@dataclass(frozen=True)
class BenchRow:
    setting: str
    clips_per_s: float
    ms_per_batch: float
    gmacs: float
    speedup: float


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
    with torch.inference_mode():
        for i in range(warmup + iters):
            start = time.perf_counter()
            model(clips)
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
) -> list[BenchRow]:
    """Forward clips/s (median over `iters`) of `workload` for each value of the swept param."""
    from workloads import get_workload

    if threads:
        torch.set_num_threads(threads)
    spec = get_workload(workload)
    settings = [(f"{sweep[0]}={v}", {**params, sweep[0]: v}) for v in sweep[1]] if sweep else [("as given", params)]
    torch.manual_seed(0)
    clips = torch.randn(batch_size, num_frames, 3, size_px, size_px)  # (B, T, C, H, W)
    rows: list[BenchRow] = []
    for label, p in settings:
        model = spec.build(p, num_classes=num_classes, num_frames=num_frames).eval()
        compute = flops.measure(model, (1, num_frames, 3, size_px, size_px))
        ms = statistics.median(_time_forward(model, clips, iters=iters, warmup=warmup)) * 1e3
        rate = batch_size / (ms / 1e3)
        base = rows[0].clips_per_s if rows else rate
        rows.append(BenchRow(setting=label, clips_per_s=rate, ms_per_batch=ms, gmacs=compute.gmacs,
                             speedup=rate / base))
    return rows
