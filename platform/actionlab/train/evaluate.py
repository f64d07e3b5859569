"""Evaluation with views folded into the batch: logits averaged per video, then top-1/top-5.

Views (clips x crops) are reshaped by `(num_videos, num_views, num_classes)` explicitly, never by
the batch size (TSM issue #134 is what happens otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class EvalResult:
    num_classes: int
    confusion: np.ndarray = None  # (K, K) int64, rows = true class, cols = predicted
    top5_hits: int = 0
    bad: list = field(default_factory=list)  # [(video_id, reason)]
    seen: int = 0  # items attempted, bad ones included

    def __post_init__(self):
        if self.confusion is None:
            self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @property
    def num_videos(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        n = self.num_videos
        return float(np.trace(self.confusion) / n) if n else 0.0

    @property
    def top5(self) -> float:
        n = self.num_videos
        return float(self.top5_hits / n) if n else 0.0

    @property
    def per_class(self) -> list[float]:
        totals = self.confusion.sum(1)
        return [float(self.confusion[k, k] / t) if t else float("nan") for k, t in enumerate(totals)]

    def merge_counts(self, confusion: np.ndarray, top5_hits: int, seen: int) -> None:
        self.confusion = confusion
        self.top5_hits = top5_hits
        self.seen = seen


def normalise(clips: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float normalised, on the clips' device."""
    return (clips.float().div_(255.0) - mean) / std


def stats_tensors(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, 1, 3, 1, 1)  # broadcast over (B, T, C, H, W)
    return (
        torch.tensor(mean, device=device).view(shape),
        torch.tensor(std, device=device).view(shape),
    )


@torch.no_grad()
def evaluate(model, loader, *, device, mean, std, num_classes: int, fusion: str = "logits") -> EvalResult:
    """Runs `model` over a loader of multi-view items (B, V, T, C, H, W) and scores each video."""
    model.eval()
    mean_t, std_t = stats_tensors(mean, std, device)
    result = EvalResult(num_classes=num_classes)
    k = min(5, num_classes)
    for batch in loader:
        result.bad.extend(batch["bad"])
        result.seen += len(batch["bad"])
        if batch["clip"] is None or len(batch["label"]) == 0:
            continue
        clips = batch["clip"].to(device, non_blocking=True)
        labels = batch["label"].to(device)
        b, v = clips.shape[:2]
        result.seen += b
        x = normalise(clips.flatten(0, 1), mean_t, std_t)  # (B*V, T, C, H, W)
        logits = model(x).float().view(b, v, -1)  # (B, V, K)
        if fusion == "probs":
            scores = F.softmax(logits, dim=-1).mean(1)  # (B, K)
        else:
            scores = logits.mean(1)  # (B, K)
        pred = scores.argmax(1)
        for t, p in zip(labels.tolist(), pred.tolist()):
            result.confusion[t, p] += 1
        result.top5_hits += int((scores.topk(k, dim=1).indices == labels[:, None]).any(1).sum())
    return result


def all_reduce_result(result: EvalResult, device) -> EvalResult:
    """Sums counts over DDP ranks (no-op for one rank)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return result
    counts = torch.tensor(
        np.concatenate([result.confusion.ravel(), [result.top5_hits, result.seen]]), device=device, dtype=torch.int64
    )
    dist.all_reduce(counts)
    counts = counts.cpu().numpy()
    k = result.num_classes
    result.merge_counts(counts[: k * k].reshape(k, k), int(counts[k * k]), int(counts[k * k + 1]))
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, result.bad)
    result.bad = [item for part in gathered for item in part]
    return result


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str):
    """A matplotlib Figure of the row-normalised confusion matrix with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    rows = confusion.sum(1, keepdims=True).clip(min=1)
    norm = confusion / rows
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def eval_dataset(meta, df, root: str, *, num_clips: int = 1, num_crops: int = 1, cache_dir: str | None = None):
    """A test-mode dataset with the preprocessing stored beside a registered model (a `ModelMeta`)."""
    from ..data.dataset import VideoClipDataset
    from ..data.manifest import preferred_decoder

    pre = meta.preprocessing
    return VideoClipDataset(
        df=df,
        root=root,
        num_classes=len(meta.classes),
        sampling=pre.sampling,
        num_frames=pre.num_frames,
        stride=pre.stride,
        train=False,
        size_px=pre.size_px,
        resize_px=pre.resize_px,
        scales=(1.0,),
        flip="off",
        flip_pairs={},
        num_clips=num_clips,
        num_crops=num_crops,
        cache_dir=cache_dir,
        decoder=preferred_decoder(df),
    )


def evaluate_model(
    model_uri: str,
    manifest: str,
    *,
    split: str = "val",
    root: str = "",
    num_clips: int = 1,
    num_crops: int = 1,
    fusion: str = "logits",
    batch_size: int = 4,
    num_loader_workers: int = 2,
    run_id: str = "",
) -> dict:
    """The full test protocol on a manifest split: views = clips x crops, scores averaged per video.

    Logs `test/top1_<clips>x<crops>` (and top-5, per-class accuracy, the confusion matrix) to the
    MLflow run `run_id` when given, so the protocol travels with the number (MLflow allows no `@`
    in metric names, hence `_`).
    """
    import json
    import tempfile
    from pathlib import Path

    import matplotlib.pyplot as plt

    from .. import tracking
    from ..data import dataset as data_dataset
    from ..data import manifest as data_manifest

    loaded = tracking.load_model(model_uri)
    meta = loaded.meta
    df = data_manifest.select_split(data_manifest.read_manifest(manifest), split)
    if df.empty:
        raise ValueError(f"{manifest}: no rows in split {split!r}; pass --split with one the manifest has")
    dataset = eval_dataset(meta, df, root or data_manifest.default_root(manifest), num_clips=num_clips,
                           num_crops=num_crops, cache_dir=str(tracking.home() / "cache"))
    loader = data_dataset.make_loader(dataset, batch_size=batch_size, shuffle=False,
                                      num_workers=num_loader_workers, timeout_s=300, drop_last=False)
    result = evaluate(loaded.model, loader, device="cpu", mean=meta.preprocessing.mean, std=meta.preprocessing.std,
                      num_classes=len(meta.classes), fusion=fusion)
    protocol = f"{num_clips}x{num_crops}"
    summary = {
        "model": model_uri,
        "protocol": f"{num_clips} clips x {num_crops} crops, {fusion} averaged",
        f"test/top1_{protocol}": result.top1,
        f"test/top5_{protocol}": result.top5,
        "num_videos": result.num_videos,
        "bad_samples": len(result.bad),
        "per_class": dict(zip(meta.classes, result.per_class)),
    }
    if run_id:
        tracking.log_metrics(run_id, {f"test/top1_{protocol}": result.top1, f"test/top5_{protocol}": result.top5},
                             step=0)
        with tempfile.TemporaryDirectory() as tmp:
            fig = confusion_figure(result.confusion, list(meta.classes), f"test top-1 {result.top1:.3f} ({protocol})")
            fig.savefig(Path(tmp) / f"confusion_{protocol}.png", dpi=110)
            plt.close(fig)
            (Path(tmp) / f"summary_{protocol}.json").write_text(json.dumps(summary, indent=1))
            tracking.log_artifacts(run_id, tmp, "test")
    return summary
