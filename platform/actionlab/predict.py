"""Top-k predictions for video files from a registered model or a checkpoint directory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from . import storage, tracking
from .train.evaluate import normalise, stats_tensors, eval_dataset


def predict(model_uri: str, videos: list[str], *, top_k: int = 5, cache_dir: str | None = None) -> list[dict]:
    """Scores each video with the test protocol stored with the model (1 clip x 1 centre crop).

    Returns one dict per video: {"video", "top": [{"class", "label", "prob"}, ...]} or {"video", "error"}.
    """
    loaded = tracking.load_model(model_uri)
    meta = loaded.meta
    mean_t, std_t = stats_tensors(meta["mean"], meta["std"], "cpu")
    cache_dir = cache_dir or str(tracking.home() / "cache")
    out = []
    for video in videos:
        local = storage.local_copy(video, cache_dir) if storage.is_remote(video) else str(Path(video).resolve())
        row = pd.DataFrame({"video": [Path(local).name], "label": [0]})
        dataset = eval_dataset(meta, row, str(Path(local).parent))
        item = dataset[0]
        if "error" in item:
            out.append({"video": video, "error": item["error"]})
            continue
        clips = item["clip"]  # (V, T, C, H, W) uint8
        with torch.no_grad():
            logits = loaded.model(normalise(clips, mean_t, std_t))  # (V, K)
            probs = F.softmax(logits.float().mean(0), dim=-1)  # (K,)
        k = min(top_k, probs.numel())
        values, indices = probs.topk(k)
        out.append(
            {
                "video": video,
                "top": [
                    {"class": meta["classes"][i], "label": int(i), "prob": round(float(p), 4)}
                    for p, i in zip(values.tolist(), indices.tolist())
                ],
            }
        )
    return out
