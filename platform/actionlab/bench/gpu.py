"""GPU rates of the input pipeline, for `scripts/gpu_check.sh`: NVDEC, nvJPEG, colour conversion on the GPU.

Every figure needs CUDA; NVDEC also needs torchcodec. What a machine lacks is reported as a skipped
row with its reason (nothing GPU-only is imported at module level), so the script runs as is
anywhere and prints GPU figures only where they were measured.

Rows: clips/s of one process (8 TSN frames per clip, sampled as in training), and the CPU cores it
kept busy meanwhile (process CPU seconds / wall seconds): what GPU decoding leaves to the CPUs.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class GpuRow:
    name: str
    clips_per_s: float  # wall clock, this process
    cpu_cores: float  # process CPU seconds / wall seconds while measuring
    note: str = ""


def _clips(manifest: str, num_frames: int, count: int, seed: int = 0) -> list[tuple[str, np.ndarray, str]]:
    """(path, frame indices, media) of `count` training clips (TSN segments), cycling over the manifest."""
    from ..data import decode, frame_folders, sampling
    from ..data import manifest as data_manifest

    df = data_manifest.read_manifest(manifest)
    root = Path(data_manifest.default_root(manifest))
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        row = df.iloc[k % len(df)]
        media = str(row.get("media", "video"))
        path = str(root / str(row["video"]))
        length = frame_folders.count_frame_files(path) if media == "frames" else decode.count_frames(path)
        out.append((path, sampling.segment_indices(length, num_frames, train=True, rng=rng), media))
    return out


def _timed(name: str, work, count: int, note: str = "") -> GpuRow:
    import torch

    work(0)  # first-call costs (CUDA context, decoder creation)
    torch.cuda.synchronize()
    cpu, wall = time.process_time(), time.perf_counter()
    for k in range(count):
        work(k)
    torch.cuda.synchronize()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return GpuRow(name, count / wall, cpu / wall, note)


def nvdec_rows(manifest: str, label: str, *, num_frames: int = 8, count: int = 48) -> list[GpuRow]:
    """torchcodec's CUDA decoder (NVDEC) beside its CPU decoder, a new decoder per clip, frames at the indices."""
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as err:
        return [GpuRow(f"{label}: torchcodec", 0.0, 0.0, f"skipped: {err}; pip install torchcodec")]
    clips = _clips(manifest, num_frames, count)
    rows = []
    for device in ("cuda", "cpu"):
        def work(k: int, device=device) -> None:
            path, indices, _ = clips[k % len(clips)]
            frames = VideoDecoder(path, device=device, seek_mode="approximate").get_frames_at(
                indices=[int(i) for i in indices]).data  # (T, 3, H, W) uint8 RGB on `device`
            assert frames.shape[0] == len(indices)

        rows.append(_timed(f"{label}: torchcodec {'NVDEC' if device == 'cuda' else 'CPU 1 thread'}", work, count))
    return rows


def nvjpeg_rows(manifest: str, label: str, *, num_frames: int = 8, count: int = 48) -> list[GpuRow]:
    """torchvision's decode_jpeg on the GPU (nvJPEG, one batched call per clip) beside it on the CPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from ..data import frame_folders

    clips = _clips(manifest, num_frames, count)
    rows = []
    for device in ("cuda", "cpu"):
        def work(k: int, device=device) -> None:
            folder, indices, _ = clips[k % len(clips)]
            data = [read_file(frame_folders.frame_file(folder, int(i))) for i in indices]
            frames = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)  # T x (3, H, W) uint8
            torch.stack(frames)

        rows.append(_timed(f"{label}: decode_jpeg {'nvJPEG' if device == 'cuda' else 'CPU'}", work, count))
    return rows


def crop_batch(batch_size: int, num_frames: int, size_px: int, *, height: int = 256, width: int = 340, seed: int = 0):
    """A `yuv.Crops` batch as `data.resize_on=device` ships it: multi-scale training crops (and flips) of
    `height` x `width` frames, not yet resized to `size_px`."""
    from ..data import transforms, yuv

    rng = np.random.default_rng(seed)
    planes = yuv.Planes(*(rng.integers(0, 256, (num_frames, h, w), dtype=np.uint8)
                          for h, w in ((height, width), (height // 2, width // 2), (height // 2, width // 2))))
    boxes = [transforms.train_box(height, width, size_px=size_px, resize_px=max(size_px, 256),
                                  scales=(1.0, 0.875, 0.75, 0.66), rng=rng) for _ in range(batch_size)]
    return yuv.Crops.cat([yuv.Crops.crop(planes, box, size_px, flip=bool(rng.integers(2))) for box in boxes])


def convert_rows(*, batch_size: int = 64, num_frames: int = 8, size_px: int = 224, count: int = 20) -> list[GpuRow]:
    """A batch from pinned memory to the GPU and normalised there: packed I420 (1.5 bytes a pixel,
    converted on the GPU) beside RGB (3 bytes), and crops of 340x256 frames resized there first
    (`data.resize_on=device`)."""
    import torch

    from ..train.evaluate import normalise, stats_tensors

    mean, std = stats_tensors((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "cuda")
    shapes = {"I420": (1, size_px * 3 // 2, size_px), "RGB": (3, size_px, size_px), "I420 crops": None}
    rows = []
    for name, shape in shapes.items():
        if shape is None:
            batch = crop_batch(batch_size, num_frames, size_px).pin_memory()
        else:
            batch = torch.randint(0, 256, (batch_size, num_frames, *shape), dtype=torch.uint8).pin_memory()

        def work(_: int, batch=batch) -> None:
            normalise(batch.to("cuda", non_blocking=True), mean, std)

        steps = "pinned copy + normalise" if shape is not None else "pinned copy + resize + normalise"
        row = _timed(f"{name} batch {batch_size}x{num_frames}x{size_px}px: {steps}", work, count)
        size = batch.data.numel() if shape is None else batch.numel()
        rows.append(GpuRow(row.name, row.clips_per_s * batch_size, row.cpu_cores,
                           f"{size / (batch_size * num_frames * size_px * size_px):.1f} bytes/pixel"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actionlab.bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", help="a `bench data --work-dir` folder: raw/, prepared_0/ (default prepared) "
                        "and the JPEG copy")
    parser.add_argument("--clips", type=int, default=48)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: no GPU figures were taken")
        return 0
    print(f"GPU: {torch.cuda.get_device_name()}; {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f}")
    work = Path(args.work_dir)
    jpeg = next((m for m in sorted(work.glob("prepared_*/manifest.parquet"))
                 if (m.parent / "videos").is_dir() and any(p.is_dir() for p in (m.parent / "videos").iterdir())), None)
    rows = [*nvdec_rows(str(work / "raw" / "manifest.parquet"), "raw", count=args.clips),
            *nvdec_rows(str(work / "prepared_0" / "manifest.parquet"), "prepared", count=args.clips)]
    if jpeg is not None:
        rows += nvjpeg_rows(str(jpeg), "JPEG frames", count=args.clips)
    rows += convert_rows()
    print(f"  {'row':62s} {'clips/s':>9s} {'CPU cores':>9s}")
    for r in rows:
        print(f"  {r.name:62s} {r.clips_per_s:9.1f} {r.cpu_cores:9.2f}  {r.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
