"""A small motion dataset rendered as real H.264 MP4 files (`actionlab data synth`).

Classes differ only by motion and come in time-reversed pairs: the second class of a pair is the
first class's random process with the frame order reversed, so every single-frame statistic is the
same for both classes of a pair. A frame-order-invariant model (TSN) therefore cannot beat 50%
within a pair, while temporal models (TSM, TAM, I3D, R(2+1)D) can.

Appearance is random per video (shape, orientation, colours, noise level) on a plain background
with mild noise: busy textures let small models memorise appearance instead of learning motion.
The motion is large (the object crosses most of the frame, turns half a circle or grows fourfold).
"""

from __future__ import annotations

import io
import multiprocessing
import os
from pathlib import Path

import numpy as np

from actionlab import storage

CLASS_NAMES = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "approach",
    "recede",
)

# Unit-radius convex outlines (x, y with y down), none with rotational symmetry, so rotation is visible.
_SHAPES = (
    np.array([[0.0, -1.0], [0.62, 0.72], [-0.62, 0.72]]),  # tall isosceles triangle
    np.array([[0.0, -1.0], [0.6, -0.15], [0.0, 0.65], [-0.6, -0.15]]),  # kite
    np.array([[0.0, -1.0], [0.72, -0.25], [0.72, 0.8], [-0.72, 0.8], [-0.72, -0.25]]),  # house
    np.array([[-0.75, -0.8], [0.85, 0.75], [-0.75, 0.75]]),  # right-angled triangle
)

_FPS = 12
_ENCODER_OPTIONS = {"g": "4", "bf": "0", "crf": "18", "preset": "ultrafast"}


def _check_shape_args(num_frames: int, size_px: int) -> None:
    if num_frames < 2:
        raise ValueError(f"num_frames={num_frames}: a motion clip needs at least 2 frames")
    if size_px < 16 or size_px % 2:
        raise ValueError(f"size_px={size_px}: use an even size of at least 16 (H.264 yuv420p needs even sizes)")


def _polygon_alpha(vertices: np.ndarray, size_px: int) -> np.ndarray:
    """Anti-aliased coverage of convex polygons, one per frame.

    Args:
        vertices: (T, K, 2) pixel coordinates (x, y) of each frame's polygon, in drawing order.
        size_px: frame side.

    Returns:
        (T, H, W) float32 coverage in [0, 1].
    """
    centres = np.arange(size_px, dtype=np.float32) + 0.5
    px = centres[None, None, None, :]  # (1, 1, 1, W)
    py = centres[None, None, :, None]  # (1, 1, H, 1)
    start = vertices.astype(np.float32)  # (T, K, 2)
    end = np.roll(start, -1, axis=1)  # (T, K, 2): the next vertex of each edge
    edge = end - start
    length = np.maximum(np.linalg.norm(edge, axis=-1), 1e-6)  # (T, K)
    # Signed distance of every pixel to every edge line; positive inside for a clockwise outline.
    cross = edge[..., 0, None, None] * (py - start[..., 1, None, None]) - edge[..., 1, None, None] * (
        px - start[..., 0, None, None]
    )  # (T, K, H, W)
    signed_area = np.sum(start[..., 0] * end[..., 1] - end[..., 0] * start[..., 1], axis=1)  # (T,)
    orientation = np.sign(signed_area)[:, None, None, None]  # (T, 1, 1, 1)
    distance = orientation * cross / length[..., None, None]  # (T, K, H, W)
    return np.clip(distance.min(axis=1) + 0.5, 0.0, 1.0)  # (T, H, W)


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A light, slightly tinted background and a dark, slightly tinted object.

    Appearance varies per video, but always with the same polarity and high contrast: the label
    lives in the motion, and a small model should not spend its few steps on colour invariance.
    """
    background = rng.uniform(170.0, 245.0) + rng.uniform(-15.0, 15.0, size=3)
    colour = rng.uniform(10.0, 80.0) + rng.uniform(-15.0, 15.0, size=3)
    return background.astype(np.float32), colour.astype(np.float32)


def _forward_process(pair: int, rng: np.random.Generator, num_frames: int, size_px: int) -> np.ndarray:
    """Renders the first class of pair `pair` (move_left, move_up, rotate_cw, approach) as (T, H, W, 3) uint8."""
    s = float(size_px)
    t = np.linspace(0.0, 1.0, num_frames)[:, None]  # (T, 1)
    shape = _SHAPES[rng.integers(len(_SHAPES))]
    angle0 = rng.uniform(0.0, 2 * np.pi)
    if pair in (0, 1):
        radius = np.full(num_frames, rng.uniform(0.16, 0.22) * s)
        along0, along1 = rng.uniform(0.72, 0.88) * s, rng.uniform(0.12, 0.28) * s  # travels towards 0
        across0 = rng.uniform(0.28, 0.72) * s
        across1 = across0 + rng.uniform(-0.08, 0.08) * s
        along = along0 + (along1 - along0) * t[:, 0]
        across = across0 + (across1 - across0) * t[:, 0]
        centre = np.stack([along, across] if pair == 0 else [across, along], axis=-1)  # (T, 2) x, y
        angle = np.full(num_frames, angle0)
    elif pair == 2:
        radius = np.full(num_frames, rng.uniform(0.22, 0.3) * s)
        centre = np.broadcast_to(s / 2 + rng.uniform(-0.08, 0.08, size=2) * s, (num_frames, 2))
        # Increasing angle with y pointing down turns clockwise on screen.
        angle = angle0 + rng.uniform(0.6, 1.1) * np.pi * t[:, 0]
    elif pair == 3:
        start_r, end_r = rng.uniform(0.06, 0.09) * s, rng.uniform(0.3, 0.4) * s
        radius = start_r * (end_r / start_r) ** t[:, 0]  # geometric growth looks like constant approach speed
        centre = np.broadcast_to(s / 2 + rng.uniform(-0.1, 0.1, size=2) * s, (num_frames, 2))
        angle = np.full(num_frames, angle0)
    else:
        raise ValueError(f"pair {pair} does not exist; there are {len(CLASS_NAMES) // 2} class pairs")
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]  # (T, 1)
    x = shape[None, :, 0] * cos - shape[None, :, 1] * sin  # (T, K)
    y = shape[None, :, 0] * sin + shape[None, :, 1] * cos  # (T, K)
    vertices = np.stack([x, y], axis=-1) * radius[:, None, None] + np.asarray(centre)[:, None, :]  # (T, K, 2)
    alpha = _polygon_alpha(vertices, size_px)[..., None]  # (T, H, W, 1)
    background, colour = _contrasting_colours(rng)
    noise_std = rng.uniform(2.0, 6.0)
    frames = background * (1.0 - alpha) + colour * alpha  # (T, H, W, 3)
    frames = frames + rng.normal(0.0, noise_std, size=frames.shape)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def render_clip(
    class_name: str, *, seed: int | tuple[int, ...], num_frames: int = 16, size_px: int = 64
) -> np.ndarray:
    """Renders one clip of a class.

    The two classes of a pair share the same random process: for the same `seed`,
    `render_clip(second, ...)` equals `render_clip(first, ...)[::-1]`.

    Args:
        class_name: one of `CLASS_NAMES`.
        seed: seed (or seed sequence) of the clip's appearance and motion.
        num_frames: clip length T.
        size_px: frame height and width.

    Returns:
        (T, H, W, 3) uint8 RGB frames.
    """
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown class {class_name!r}; known: {list(CLASS_NAMES)}")
    _check_shape_args(num_frames, size_px)
    index = CLASS_NAMES.index(class_name)
    frames = _forward_process(index // 2, np.random.default_rng(seed), num_frames, size_px)
    return frames[::-1].copy() if index % 2 else frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, *, fps: int = _FPS, options: dict | None = None) -> None:
    """Writes (T, H, W, 3) uint8 frames as an H.264 (libx264, yuv420p, faststart) MP4 file.

    The file appears under its final name only when complete (written to `<path>.part` first).
    """
    import av  # deferred: nothing heavy at import

    num_frames, height, width, _ = frames.shape
    tmp = f"{os.fspath(path)}.part"
    # faststart rewrites the file to move the index first, so it needs a real path, not a buffer.
    with av.open(tmp, mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(options or _ENCODER_OPTIONS)
        stream.codec_context.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def _write_video(job: tuple[str, str, tuple[int, ...], int, int]) -> None:
    path, class_name, seed, num_frames, size_px = job
    write_mp4(path, render_clip(class_name, seed=seed, num_frames=num_frames, size_px=size_px))


def synthesize(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 6,
    videos_per_class: int = 48,
    num_frames: int = 16,
    size_px: int = 64,
    seed: int = 0,
    val_fraction: float = 0.25,
    num_procs: int = 2,
    reversed_twins: bool = False,
) -> Path:
    """Writes the motion dataset: `videos/*.mp4`, `manifest.parquet` and `classes.txt`.

    Args:
        out_dir: local folder (created).
        num_classes: 2..8; classes are taken in pair order from `CLASS_NAMES`.
        videos_per_class: videos per class.
        num_frames: frames per video.
        size_px: frame height and width (even).
        seed: frames, labels and splits are a function of the seed (the bytes may differ).
        val_fraction: share of each class put in the `val` split (stratified).
        num_procs: encoder processes (1 encodes in this process).
        reversed_twins: video i of a pair's second class is video i of its first class played
            backwards (same seed, same split), so frame order is all that tells the two apart, even
            on the training set: an order-blind model cannot fit it by remembering appearance.

    Returns:
        Path of `manifest.parquet`.
    """
    import pandas as pd

    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes={num_classes}: choose 2..{len(CLASS_NAMES)} (classes: {list(CLASS_NAMES)})")
    if videos_per_class < 1:
        raise ValueError(f"videos_per_class={videos_per_class}: need at least 1")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: use a fraction in [0, 1)")
    _check_shape_args(num_frames, size_px)

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    num_val = int(round(videos_per_class * val_fraction))
    if videos_per_class > 1:
        num_val = min(max(num_val, 1 if val_fraction > 0 else 0), videos_per_class - 1)
    rows, jobs = [], []
    for label, class_name in enumerate(CLASS_NAMES[:num_classes]):
        draw = label // 2 * 2 if reversed_twins else label  # twins draw as the first class of their pair
        val_members = set(np.random.default_rng([seed, 7919, draw]).permutation(videos_per_class)[:num_val].tolist())
        for i in range(videos_per_class):
            relative = f"videos/{class_name}_{i:03d}.mp4"
            jobs.append((str(out / relative), class_name, (seed, draw, i), num_frames, size_px))
            split = "val" if i in val_members else "train"
            rows.append({"video": relative, "label": label, "split": split, "num_frames": num_frames})

    if num_procs > 1 and len(jobs) > 1:
        # fork keeps start-up cheap; the children only run numpy and PyAV.
        with multiprocessing.get_context("fork").Pool(min(num_procs, len(jobs))) as pool:
            pool.map(_write_video, jobs, chunksize=8)
    else:
        for job in jobs:
            _write_video(job)

    storage.write_bytes(out / "classes.txt", ("\n".join(CLASS_NAMES[:num_classes]) + "\n").encode())
    frame = pd.DataFrame(rows).astype({"label": "int64", "num_frames": "int64"})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    manifest = out / "manifest.parquet"
    storage.write_bytes(manifest, buffer.getvalue())
    return manifest
