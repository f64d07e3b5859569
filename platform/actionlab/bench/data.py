"""`actionlab bench data`: decode + transform clips/s per CPU core, side by side, on the same videos.

Rates are clips per CPU-second of the measuring process (one thread, a new reader per clip, as a
loader worker does), so a busy shared machine slows the wall clock but not the figure much. Rows
are measured in interleaved rounds and the median round is reported; the first row is the baseline.
A row is what a loader worker does: items, then their batch (collate). Where each clip's time goes
is profiled per stage (`data.profile`); the batch's colour conversion and normalisation, which
training runs on the GPU when there is one, is timed apart on this CPU (`normalise`).

Without a manifest the benchmark makes Kinetics-like files itself (340x256, 30 fps, 10 s, x264 at
~600 kbit/s with keyframes only at frames 0 and 250, as x264 and YouTube downloads have), prepares
copies with `actionlab data prepare`'s encoder at several keyframe intervals, and reports the curve
of keyframe interval vs size vs speed that chose `data prepare`'s defaults.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import encode
from ..data import prepare as data_prepare

KINETICS_LIKE = dict(width=340, height=256, fps=30, seconds=10, keyint=250, bitrate=600_000)
# Consumption of one H100 training TSM-R50 8f 224 px at ~30% MFU (see issue 11): the yardstick
# that "cores per GPU" is measured against; `--gpu-clips-per-s` changes it.
GPU_CLIPS_PER_S = 1500.0

# The curve: (row name, settings) of prepared copies; the first prepared row is `data prepare`'s default.
CURVE = (
    ("prepared (default)", encode.EncodeSettings()),
    ("intra, no fastdecode", encode.EncodeSettings(fast_decode=False)),
    ("gop 8", encode.EncodeSettings(gop=8)),
    ("gop 16", encode.EncodeSettings(gop=16)),
    ("gop 32", encode.EncodeSettings(gop=32)),
    ("JPEG frames", encode.EncodeSettings(output_format="jpeg")),
)


def make_kinetics_like(path: str | os.PathLike, *, seed: int, width: int = 340, height: int = 256, fps: int = 30,
                       seconds: float = 10, keyint: int = 250, bitrate: int = 600_000) -> None:
    """Writes a camera-like H.264 MP4: a textured scene panning under moving objects, sensor noise.

    Keyframes come only every `keyint` frames (no scene-cut keyframes) and B-frames are on, as in
    downloaded videos; the bitrate is what Kinetics clips at this size typically have.
    """
    import av

    rng = np.random.default_rng(seed)
    num_frames = int(round(fps * seconds))
    # A smooth texture twice the frame size, panned across by the "camera".
    coarse = rng.uniform(40, 215, size=(height // 8, width // 4, 3))
    texture = np.kron(coarse, np.ones((16, 8, 1)))[: 2 * height, : 2 * width]  # (2H, 2W, 3)
    texture = np.pad(texture, ((0, max(0, 2 * height - texture.shape[0])), (0, max(0, 2 * width - texture.shape[1])),
                               (0, 0)), mode="edge")
    blobs = rng.uniform(0, 1, size=(3, 6))  # x, y, vx, vy, radius, shade per object
    yy, xx = np.mgrid[0:height, 0:width]
    tmp = f"{os.fspath(path)}.part"
    with av.open(tmp, mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bitrate
        stream.options = {"g": str(keyint), "keyint_min": str(keyint), "sc_threshold": "0", "bf": "3",
                          "preset": "veryfast"}
        stream.codec_context.thread_count = 1
        for t in range(num_frames):
            ox = int((width / 2) * (0.5 + 0.5 * np.sin(t / num_frames * 2 * np.pi)))
            oy = int(height / 4 + (height / 4) * np.sin(t / num_frames * 4 * np.pi))
            frame = texture[oy : oy + height, ox : ox + width].copy()  # (H, W, 3)
            for x, y, vx, vy, r, shade in blobs:
                cx = (x + (vx - 0.5) * t / fps * 0.3) % 1.0 * width
                cy = (y + (vy - 0.5) * t / fps * 0.3) % 1.0 * height
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 < (10 + 30 * r) ** 2
                frame[inside] = 255 * shade
            frame = np.clip(frame + rng.normal(0, 3, size=frame.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


@dataclass(frozen=True)
class DataSet:
    """One row's data and reader: a manifest, its video decoder, the pixel path and the JPEG decoder."""

    name: str
    manifest: str
    decoder: str
    pixels: str = "rgb"  # or CODEC_ALONE
    jpeg: str = ""  # frame folders: `frame_folders.JPEG_DECODERS`


# A row's `pixels` for the codec alone, written here apart from the project's reader: each wanted
# frame's packet, already in memory, decoded by PyAV's H.264 decoder, kept nowhere. The floor under
# any reader; a reader's row divided by this one is the share of the codec's speed it keeps.
CODEC_ALONE = "codec alone"
# A row's `pixels` for YUV planes the loader only crops (`data.resize_on=device`): the resize runs with
# the batch's colour conversion, on the GPU in training (here in the `normalise` stage).
YUV_CROP = "yuv420 crop"


@dataclass(frozen=True)
class DataBenchRow:
    name: str
    decoder: str
    pixels: str
    jpeg: str
    clips_per_core_s: float  # clips per CPU-second (items + collate), median over rounds
    clips_per_s_wall: float
    ms_per_clip: float
    mb_per_video: float
    speedup: float  # vs the first row
    cores_per_gpu: float  # with the batch normalised on the GPU
    stages_ms: dict  # per clip: profile stage -> ms (CPU time of the batch's normalisation included)
    clips_per_core_s_cpu_normalise: float  # when this CPU also converts and normalises the batches


def _dataset(manifest: str, *, num_frames: int, sampling: str, size_px: int, pixels: str = "rgb",
             jpeg: str = ""):
    from workloads import InputFormat

    from ..data import dataset as data_dataset
    from ..data import manifest as data_manifest

    df = data_manifest.read_manifest(manifest)
    root = data_manifest.default_root(manifest)
    fmt = InputFormat(sampling=sampling, num_frames=num_frames, stride=2, size_px=size_px,
                      resize_px=max(size_px, 256) if size_px > 128 else size_px + size_px // 7)
    # Class names only matter to `swap_pairs` flips, which the benchmark does not take.
    classes = [str(k) for k in range(int(df["label"].astype(int).max()) + 1)]
    return data_dataset.build_dataset(
        df, fmt, train=True, root=root, classes=classes, decoder="", flip="on", scales=(1.0, 0.875, 0.75, 0.66),
        cache_dir=str(Path(manifest).parent / ".cache") if "://" in manifest else None,
        pixels="yuv420" if pixels == YUV_CROP else pixels, jpeg_decoder=jpeg or "pil",
        resize_on="device" if pixels == YUV_CROP else "loader",
    )


def measure_codec(manifest: str, *, num_frames: int, count: int, offset: int,
                  packets: dict[str, tuple[str, bytes, list[bytes]]]) -> tuple[float, float, float, dict]:
    """`measure`'s figures for the codec alone on `count` videos of `manifest` from `offset`: `num_frames`
    frames drawn as the training reader draws them (one at random in each of equal segments), each
    one's packet decoded by a fresh single-threaded decoder per clip. The packets are demuxed with
    FFmpeg outside the clock (`packets`: path -> (codec, its configuration, every packet's bytes), filled
    on first use), so the figure is the codec's work and nothing else: no file, no container, no
    seek. Stages: open (making the decoder), decode."""
    import av

    from ..data import manifest as data_manifest
    from ..data import sampling

    df = data_manifest.read_manifest(manifest)
    root = Path(data_manifest.default_root(manifest))
    rng = np.random.default_rng(offset)
    stages = dict.fromkeys(("open", "decode"), 0.0)
    cpu = wall = 0.0
    for k in range(count):
        path = str(root / df["video"].iloc[(offset + k) % len(df)])
        if path not in packets:
            with av.open(path) as container:
                stream = container.streams.video[0]
                packets[path] = (stream.codec_context.name, stream.codec_context.extradata,
                                 [bytes(p) for p in container.demux(stream) if p.size])  # decode order = display order
        codec, extradata, data = packets[path]
        wanted = sampling.segment_indices(len(data), num_frames, train=True, rng=rng)
        cpu_start, wall_start, tick = time.process_time(), time.perf_counter(), time.thread_time()
        decoder = av.CodecContext.create(codec, "r")
        decoder.extradata, decoder.thread_count = extradata, 1  # one core, as a loader worker
        now = time.thread_time()
        stages["open"] += now - tick
        for i in sorted(set(wanted)):
            decoder.decode(av.Packet(data[i]))
        stages["decode"] += time.thread_time() - now
        cpu, wall = cpu + time.process_time() - cpu_start, wall + time.perf_counter() - wall_start
    return cpu, wall, 0.0, stages


def measure(ds, decoder: str, count: int, offset: int) -> tuple[float, float, float, dict]:
    """(CPU seconds, wall seconds, CPU seconds of normalising the batch, seconds per profile stage) to
    load `count` clips of `ds` from item `offset` and collate them into one batch."""
    from ..data import dataset as data_dataset
    from ..data import profile
    from ..train.evaluate import normalise, stats_tensors

    previous = os.environ.get("ACTIONLAB_DECODER")
    os.environ["ACTIONLAB_DECODER"] = decoder
    mean, std = stats_tensors(ds.fmt.mean, ds.fmt.std, "cpu")
    try:
        profile.start()
        cpu, wall = time.process_time(), time.perf_counter()
        items = [ds[(offset + k) % len(ds)] for k in range(count)]
        bad = [item["error"] for item in items if "error" in item]
        if bad:
            raise RuntimeError(f"benchmark video failed to load: {bad[0]}")
        batch = data_dataset.collate_clips(items)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        norm, tick = time.process_time(), profile.clock()
        normalise(batch["clip"], mean, std)
        profile.lap("normalise", tick)
        return cpu, wall, time.process_time() - norm, profile.stop()
    finally:
        profile.stop()
        if previous is None:
            os.environ.pop("ACTIONLAB_DECODER", None)
        else:
            os.environ["ACTIONLAB_DECODER"] = previous


def _mb_per_video(manifest: str) -> float:
    from ..data import manifest as data_manifest

    df = data_manifest.read_manifest(manifest)
    root = Path(data_manifest.default_root(manifest))
    sizes = [data_prepare.local_size(str(root / v)) for v in df["video"].astype(str)]
    return float(np.mean(sizes)) / 1e6 if sizes else 0.0


def bench_data(
    sets: list[DataSet],
    *,
    num_frames: int = 8,
    sampling: str = "segments",
    size_px: int = 224,
    clips_per_round: int = 8,
    rounds: int = 3,
    gpu_clips_per_s: float = GPU_CLIPS_PER_S,
    log=print,
) -> list[DataBenchRow]:
    """Clips/s per core of each data set, interleaved; the first is the baseline."""
    import torch

    from ..data import profile

    torch.set_num_threads(1)  # one loader worker = one core
    datasets = {}
    for d in sets:
        key = (d.manifest, d.pixels, d.jpeg)
        if key not in datasets and d.pixels != CODEC_ALONE:
            datasets[key] = _dataset(d.manifest, num_frames=num_frames, sampling=sampling, size_px=size_px,
                                     pixels=d.pixels, jpeg=d.jpeg)

    packets: dict = {}  # the codec-alone rows' packets, demuxed once

    def run(d: DataSet, count: int, offset: int) -> tuple[float, float, float, dict]:
        if d.pixels == CODEC_ALONE:
            return measure_codec(d.manifest, num_frames=num_frames, count=count, offset=offset, packets=packets)
        return measure(datasets[d.manifest, d.pixels, d.jpeg], d.decoder, count, offset)

    for d in sets:  # warm the page cache and imports outside the timed rounds
        run(d, 1, 0)
    times: dict[int, list] = {i: [] for i in range(len(sets))}
    for r in range(rounds):
        for i, d in enumerate(sets):
            times[i].append(run(d, clips_per_round, r * clips_per_round))
        log(f"round {r + 1}/{rounds} done")
    rows = []
    for i, d in enumerate(sets):
        cpu = statistics.median(t[0] for t in times[i])
        wall = statistics.median(t[1] for t in times[i])
        norm = statistics.median(t[2] for t in times[i])
        stages = {stage: 1e3 * sum(t[3].get(stage, 0.0) for t in times[i]) / (rounds * clips_per_round)
                  for stage in profile.STAGES}
        rate = clips_per_round / max(cpu, 1e-9)
        base = rows[0].clips_per_core_s if rows else rate
        rows.append(DataBenchRow(
            name=d.name, decoder=d.decoder, pixels=d.pixels, jpeg=d.jpeg, clips_per_core_s=rate,
            clips_per_s_wall=clips_per_round / max(wall, 1e-9), ms_per_clip=cpu / clips_per_round * 1e3,
            mb_per_video=_mb_per_video(d.manifest), speedup=rate / base, cores_per_gpu=gpu_clips_per_s / rate,
            stages_ms=stages, clips_per_core_s_cpu_normalise=clips_per_round / max(cpu + norm, 1e-9),
        ))
    return rows


def codec_shares(rows: list[DataBenchRow]) -> list[str]:
    """Per data set with a `CODEC_ALONE` row: how much of the codec's speed each reader keeps, and the
    YUV reader's speed-up over the RGB one (the reader before YUV planes)."""
    lines = []
    for codec in (r for r in rows if r.pixels == CODEC_ALONE):
        same = {(r.decoder, r.pixels): r for r in rows if r.name == codec.name}
        parts = [f"{r.decoder} {r.pixels} {r.clips_per_core_s / codec.clips_per_core_s:.0%}"
                 for r in same.values() if r is not codec]
        line = f"  {codec.name}: share of the codec alone's {codec.clips_per_core_s:.1f} clips/s/core: {', '.join(parts)}"
        for pixels in ("yuv420", YUV_CROP):
            if ("pyav", "rgb") in same and ("pyav", pixels) in same:
                ratio = same["pyav", pixels].clips_per_core_s / same["pyav", "rgb"].clips_per_core_s
                line += f"; pyav {pixels} / pyav rgb = {ratio:.2f}x"
        lines.append(line)
    return lines


def reader_sets(name: str, manifest: str, decoders: list[str], *, frames: bool = False) -> list[DataSet]:
    """The rows for one manifest: each video decoder with RGB frames, PyAV also with YUV planes (resized
    in the loader, and only cropped: `YUV_CROP`) and, on all-intra files, alone (`CODEC_ALONE`); for
    JPEG frame folders, each JPEG decoder instead."""
    from ..data import frame_folders

    if frames:
        return [DataSet(name, manifest, decoders[0], jpeg=jpeg) for jpeg in frame_folders.JPEG_DECODERS]
    out = [DataSet(name, manifest, decoder) for decoder in decoders]
    if "pyav" in decoders:
        out += [DataSet(name, manifest, "pyav", pixels=p) for p in ("yuv420", YUV_CROP)]
        if _all_intra(manifest):
            out.append(DataSet(name, manifest, "pyav", pixels=CODEC_ALONE))
    return out


def _all_intra(manifest: str) -> bool:
    """Whether the manifest's first video has only keyframes (as `data prepare`'s default writes).

    There each wanted frame costs the codec one decode, whatever the reader, so decoding those
    packets alone is a floor under any reader. With keyframes apart, what a frame costs depends on
    the path taken between keyframes (frames decoded on from a keyframe, or seeks), so no floor row is
    shown for them.
    """
    import av

    from ..data import manifest as data_manifest

    df = data_manifest.read_manifest(manifest)
    if not len(df) or str(df.iloc[0].get("media", "video")) == "frames":
        return False
    path = Path(data_manifest.default_root(manifest)) / str(df["video"].iloc[0])
    with av.open(str(path)) as container:
        entries = container.streams.video[0].index_entries
        return len(entries) > 0 and all(entry.flags & 1 for entry in entries)  # AVINDEX_KEYFRAME


def make_curve_sets(work_dir: str | os.PathLike, *, num_videos: int, decoders: list[str], curve=CURVE,
                    log=print) -> list[DataSet]:
    """Writes Kinetics-like raw files and their prepared copies; returns the rows (`reader_sets`).

    Rows: the raw files, then each prepared setting, each with every reader.
    """
    import pandas as pd

    from ..data import manifest as data_manifest

    work = Path(work_dir)
    raw = work / "raw"
    (raw / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_videos):
        path = raw / "videos" / f"clip_{i:03d}.mp4"
        if not path.exists():
            make_kinetics_like(path, seed=i, **KINETICS_LIKE)
        rows.append({"video": f"videos/{path.name}", "label": i % 2, "split": "train"})
    (raw / "classes.txt").write_text("a\nb\n")
    raw_manifest = raw / "manifest.parquet"
    raw_manifest.write_bytes(data_manifest.manifest_bytes(pd.DataFrame(rows)))
    log(f"{num_videos} Kinetics-like raw videos in {raw}")
    sets = reader_sets("raw", str(raw_manifest), decoders)
    for i, (name, settings) in enumerate(curve):
        out = work / f"prepared_{i}"
        report = data_prepare.prepare_dataset(str(raw_manifest), str(out), settings, use_ray=False, log=lambda _: None)
        if report.bad:
            raise RuntimeError(f"preparing the benchmark videos failed: {report.bad[:3]}")
        log(f"prepared copy '{name}' ({settings.describe()}) in {report.seconds:.1f}s")
        sets += reader_sets(name, report.manifest, decoders, frames=settings.output_format == "jpeg")
    return sets


def frame_fidelity(raw_manifest: str, prepared_manifest: str, *, frames: int = 8) -> float:
    """PSNR (dB) of a prepared copy's frames against the raw file's, at the same size and indices."""
    import torch
    import torch.nn.functional as F

    from ..data import decode, frame_folders
    from ..data import manifest as data_manifest

    raw_df, prep_df = data_manifest.read_manifest(raw_manifest), data_manifest.read_manifest(prepared_manifest)
    raw_root, prep_root = Path(data_manifest.default_root(raw_manifest)), Path(data_manifest.default_root(prepared_manifest))
    errors = []
    for video, prepared, media in zip(raw_df["video"], prep_df["video"],
                                      prep_df.get("media", ["video"] * len(prep_df))):
        count = decode.count_frames(raw_root / video)
        indices = np.linspace(0, count - 1, frames).round().astype(int)
        a = decode.read_frames(raw_root / video, indices)  # (N, H, W, 3)
        if media == "frames":
            b = frame_folders.read_frame_folder(prep_root / prepared, indices)
        else:
            b = decode.read_frames(prep_root / prepared, indices)
        ta = torch.from_numpy(a).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
        tb = torch.from_numpy(b).permute(0, 3, 1, 2).float()
        if ta.shape != tb.shape:
            ta = F.interpolate(ta, size=tb.shape[-2:], mode="area")
        errors.append(float(((ta - tb) ** 2).mean()))
    mse = float(np.mean(errors))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def available_decoders() -> list[str]:
    """The video decoders importable here (`decode.available_decoders`), for the benchmark's rows."""
    from ..data import decode

    return decode.available_decoders()

