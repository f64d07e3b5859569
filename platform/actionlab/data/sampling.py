"""Frame sampling: which T frames of a video of L frames make a clip (0-based indices).

- `segment_indices`: TSN/TSM "uniform" sampling (mmaction2 `1x1xT`): the video is cut into T equal
  segments and one frame is taken from each; training draws an independent random offset per
  segment, testing takes segment centres, shifted by single frames per test clip as in IBM's
  multi-clip protocol.
- `dense_indices`: I3D-style dense clips (PySlowFast `T x tau`, mmaction2 `Tx{stride}x1`): T frames
  `stride` apart from one start; training draws the start, testing spreads `num_clips` starts
  evenly; short videos loop (indices wrap modulo L).
- `snippet_indices`: TDN / H2CN snippets: S segments, from each a run of n consecutive frames
  (segment-major, frames in time order); the segments cut the L - n + 1 possible run starts.
"""

from __future__ import annotations

import math

import numpy as np


def _check(num_frames: int, clip_len: int, clip_index: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: the video has no frames to sample")
    if clip_len < 1:
        raise ValueError(f"T={clip_len}: a clip needs at least one frame")
    if num_clips < 1 or not 0 <= clip_index < num_clips:
        raise ValueError(f"clip_index={clip_index} must lie in [0, num_clips={num_clips})")


def segment_indices(
    num_frames: int,
    T: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """One frame per segment of T equal segments (TSN/TSM sampling).

    Segment i holds the frames floor(i L / T) .. floor((i + 1) L / T) - 1, so every frame belongs to
    exactly one segment; videos shorter than T repeat frames instead of failing.

    Args:
        num_frames: L, frames in the video (or in its start..end range).
        T: segments (= frames in the clip).
        train: random offset in each segment (training) or the deterministic test sampling.
        rng: random generator for training (a fresh unseeded one when omitted).
        clip_index: test clip number, 0 <= clip_index < num_clips.
        num_clips: test clips per video; clip k is shifted by `range(-n//2+1, n//2+1)[k]` frames
            (IBM's multi-clip test), clamped to the segment.

    Returns:
        (T,) int64 indices, non-decreasing, in [0, num_frames).
    """
    _check(num_frames, T, clip_index, num_clips)
    tick = num_frames / T
    edges = np.arange(T + 1) * tick  # (T + 1,) segment boundaries
    # Whole frames per segment: disjoint and non-empty when L >= T; a single repeated frame when L < T.
    first = np.floor(edges[:-1])  # (T,)
    last = np.maximum(first, np.floor(edges[1:]) - 1)  # (T,)
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        indices = first + np.floor(rng.random(T) * (last - first + 1))
    else:
        shift = list(range(-num_clips // 2 + 1, num_clips // 2 + 1))[clip_index]
        shift = min(max(shift, -tick / 2), tick / 2)
        indices = np.floor(edges[:-1] + tick / 2 + shift)
    indices = np.clip(indices, first, last)
    return np.clip(indices, 0, num_frames - 1).astype(np.int64)


def dense_indices(
    num_frames: int,
    T: int,
    stride: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """T frames `stride` apart from one start (dense clip sampling).

    Args:
        num_frames: L, frames in the video (or in its start..end range).
        T: frames in the clip.
        stride: frame interval tau.
        train: random start in [0, L - T * stride] (training) or deterministic starts (testing).
        rng: random generator for training (a fresh unseeded one when omitted).
        clip_index: test clip number, 0 <= clip_index < num_clips.
        num_clips: test clips; clip k starts at the centre of the k-th of `num_clips` equal parts
            of [0, L - T * stride] (one clip: the centred clip).

    Returns:
        (T,) int64 indices in [0, num_frames); they wrap modulo L when the clip is longer than the video.
    """
    _check(num_frames, T, clip_index, num_clips)
    if stride < 1:
        raise ValueError(f"stride={stride}: the frame interval must be at least 1")
    max_start = max(num_frames - T * stride, 0)
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        start = int(rng.integers(0, max_start + 1))
    else:
        start = math.floor(max_start * (clip_index + 0.5) / num_clips)
    return ((start + np.arange(T) * stride) % num_frames).astype(np.int64)


def snippet_indices(
    num_frames: int,
    S: int,
    snippet_frames: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """S runs of `snippet_frames` consecutive frames, one run per segment (TDN / H2CN sampling).

    The rule of the official `TSNDataSet` (MCG-NJU/TDN and ty-97/H2CN `ops/dataset.py`), 0-based:
    with n = snippet_frames and P = L - n + 1 possible run starts,
      training: d = P // S; start_i = i*d + randint(d) when d > 0; else, when L > S, S sorted random
        starts in [0, P); else every start is 0;
      testing: when L > S + n - 1, tick = P / S and start_i = floor(tick / 2 + i * tick) (segment
        centres); else every start is 0;
    a run is start, start + 1, ... and repeats the last frame where it would pass the video's end.
    Official multi-clip tests draw random training starts (Kinetics) or repeat the centres; here test
    clip k shifts every start by `range(-n//2+1, n//2+1)[k]` frames, clamped to its segment, as
    `segment_indices` does (deterministic views).

    Args:
        num_frames: L, frames in the video (or in its start..end range).
        S: segments (snippets per clip).
        snippet_frames: n, consecutive frames per snippet.
        train: random start per segment (training) or the segment centres (testing).
        rng: random generator for training (a fresh unseeded one when omitted).
        clip_index: test clip number, 0 <= clip_index < num_clips.
        num_clips: test clips per video.

    Returns:
        (S * n,) int64 indices in [0, num_frames): segment-major, each snippet's frames in time order.
    """
    _check(num_frames, S, clip_index, num_clips)
    if snippet_frames < 1:
        raise ValueError(f"snippet_frames={snippet_frames}: a snippet needs at least one frame")
    starts_available = max(num_frames - snippet_frames + 1, 1)  # P; short videos: one start (frame 0)
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        duration = starts_available // S
        if duration > 0:
            starts = np.arange(S) * duration + rng.integers(0, duration, size=S)
        elif num_frames > S:
            starts = np.sort(rng.integers(0, starts_available, size=S))
        else:
            starts = np.zeros(S, dtype=np.int64)
    elif num_frames > S + snippet_frames - 1:
        tick = starts_available / S
        shift = list(range(-num_clips // 2 + 1, num_clips // 2 + 1))[clip_index]
        shift = min(max(shift, -tick / 2), tick / 2)
        edges = np.arange(S + 1) * tick  # (S + 1,) segment boundaries over the run starts
        first = np.floor(edges[:-1])
        last = np.ceil(edges[1:]) - 1  # a shifted view stays in its segment (the centre always does)
        starts = np.clip(np.floor(edges[:-1] + tick / 2 + shift), first, last)
    else:
        starts = np.zeros(S, dtype=np.int64)
    runs = starts[:, None] + np.arange(snippet_frames)  # (S, n)
    return np.minimum(runs, num_frames - 1).reshape(-1).astype(np.int64)  # (S * n,)
