"""Top-k predictions for video files (or decoded uint8 clips) from a registered model or a checkpoint dir.

`predict` is the fast path behind `actionlab predict`; the MLflow pyfunc model (`pyfunc.py`)
calls the same `predict_videos` / `predict_clips`, so both give the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import storage, tracking
from ..data import transforms
from ..data.dataset import build_dataset
from ..train.evaluate import normalise, stats_tensors
from . import folder


def predict(model_uri: str, videos: list[str], *, top_k: int = 5, cache_dir: str | None = None) -> list[dict]:
    """Scores each video with the test protocol stored with the model (1 clip x 1 centre crop).

    Returns one dict per video: {"video", "top": [{"class", "label", "prob"}, ...]} or {"video", "error"}.
    """
    return predict_videos(folder.load_model(model_uri), videos, top_k=top_k, cache_dir=cache_dir)


def _top(loaded: folder.LoadedModel, views: torch.Tensor, top_k: int) -> list[dict]:
    """views: uint8 (V, T, C, H, W) of one video -> its top-k classes (logits averaged over views)."""
    meta = loaded.meta
    mean_t, std_t = stats_tensors(meta.preprocessing.mean, meta.preprocessing.std, "cpu")
    with torch.no_grad():
        logits = loaded.model(normalise(views, mean_t, std_t))  # (V, K)
        probs = F.softmax(logits.float().mean(0), dim=-1)  # (K,)
    values, indices = probs.topk(min(top_k, probs.numel()))
    return [
        {"class": meta.classes[i], "label": int(i), "prob": round(float(p), 4)}
        for p, i in zip(values.tolist(), indices.tolist())
    ]


def predict_videos(
    loaded: folder.LoadedModel, videos: list[str], *, top_k: int = 5, cache_dir: str | None = None,
    pixels: str = "rgb",
) -> list[dict]:
    """`predict` for a model already loaded: local paths or URIs (s3://...), decoded as in evaluation
    (`pixels` `rgb` or `yuv420`, as `data.pixels`)."""
    meta = loaded.meta
    cache_dir = cache_dir or str(tracking.home() / "cache")
    out = []
    for video in videos:
        local = storage.local_copy(video, cache_dir) if storage.is_remote(video) else str(Path(video).resolve())
        row = pd.DataFrame({"video": [Path(local).name], "label": [0]})
        item = build_dataset(row, meta.preprocessing, train=False, root=str(Path(local).parent),
                             classes=meta.classes, pixels=pixels)[0]
        if "error" in item:
            out.append({"video": video, "error": item["error"]})
            continue
        out.append({"video": video, "top": _top(loaded, item["clip"], top_k)})  # clip (V, T, C, H, W) uint8
    return out


def predict_clips(loaded: folder.LoadedModel, clips, *, top_k: int = 5) -> list[dict]:
    """Top-k for a uint8 batch (B, T, H, W, C) of frames already sampled (T = the model's num_frames, times
    snippet_frames for `snippets` sampling).

    Frames get the evaluation transform (short side to resize_px, centre crop size_px), so a clip
    decoded with the model's sampling scores as its video does through `predict_videos`.

    Raises:
        ValueError: not a uint8 (B, T, H, W, 3) batch with the model's T.
    """
    batch = np.asarray(clips.numpy() if isinstance(clips, torch.Tensor) else clips)
    pre = loaded.meta.preprocessing
    frames = pre.clip_frames
    if batch.dtype != np.uint8 or batch.ndim != 5 or batch.shape[-1] != 3 or batch.shape[1] != frames:
        raise ValueError(
            f"expected a uint8 batch (B, T={frames}, H, W, 3) of RGB frames; got {batch.dtype} "
            f"{tuple(batch.shape)}. Sample {frames} frames per video ({pre.sampling} sampling, "
            f"stride {pre.stride}) or pass video paths instead"
        )
    out = []
    for clip in batch:  # (T, H, W, 3)
        views = transforms.test_transform(clip, size_px=pre.size_px, resize_px=pre.resize_px, num_crops=1)
        out.append({"top": _top(loaded, views, top_k)})  # views (1, T, C, H, W)
    return out
