"""Evaluation with views folded into the batch: logits averaged per video, then top-1/top-5.

Views (clips x crops) are reshaped by `(num_videos, num_views, num_classes)` explicitly, never by
the batch size (TSM issue #134 is what happens otherwise). Several models (e.g. H2CN's 8- and
16-segment nets, the "(8+16)" rows) are ensembled by averaging their per-video scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config import FUSIONS
from ..data import yuv


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

    def add(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Counts a batch of per-video scores (B, K) against labels (B,)."""
        pred = scores.argmax(1)
        for t, p in zip(labels.tolist(), pred.tolist()):
            self.confusion[t, p] += 1
        k = min(5, self.num_classes)
        self.top5_hits += int((scores.topk(k, dim=1).indices == labels[:, None]).any(1).sum())

    def merge_counts(self, confusion: np.ndarray, top5_hits: int, seen: int) -> None:
        self.confusion = confusion
        self.top5_hits = top5_hits
        self.seen = seen


def normalise(clips: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float normalised, on the clips' device.

    Packed I420 clips (C = 1, `data.pixels=yuv420`) are converted to RGB here, once per batch, on
    the batch's device; the workload's mean and std then mean what they mean for RGB clips."""
    rgb = yuv.to_rgb(clips) if yuv.is_i420(clips) else clips.float()  # (..., 3, H, W) in [0, 255]
    return rgb.div_(255.0).sub_(mean).div_(std)


def stats_tensors(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, 1, 3, 1, 1)  # broadcast over (B, T, C, H, W)
    return (
        torch.tensor(mean, device=device).view(shape),
        torch.tensor(std, device=device).view(shape),
    )


@torch.no_grad()
def score_batches(model, loader, *, device, mean, std, fusion: str = "logits"):
    """Yields (batch, scores (B, K) float, labels (B,)) per loader batch of multi-view items (B, V, T, C, H, W).

    A video's score fuses its V views: the mean of the logits (`logits`) or of the softmax (`probs`).
    Batches whose items were all bad yield scores None.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r} is not one of {list(FUSIONS)}")
    model.eval()
    mean_t, std_t = stats_tensors(mean, std, device)
    for batch in loader:
        if batch["clip"] is None or len(batch["label"]) == 0:
            yield batch, None, None
            continue
        clips = batch["clip"].to(device, non_blocking=True)
        labels = batch["label"].to(device)
        b, v = clips.shape[:2]
        x = normalise(clips.flatten(0, 1), mean_t, std_t)  # (B*V, T, C, H, W)
        logits = model(x).float().view(b, v, -1)  # (B, V, K)
        scores = F.softmax(logits, dim=-1).mean(1) if fusion == "probs" else logits.mean(1)  # (B, K)
        yield batch, scores, labels


def evaluate(model, loader, *, device, mean, std, num_classes: int, fusion: str = "logits") -> EvalResult:
    """Runs `model` over a loader of multi-view items (B, V, T, C, H, W) and scores each video."""
    result = EvalResult(num_classes=num_classes)
    for batch, scores, labels in score_batches(model, loader, device=device, mean=mean, std=std, fusion=fusion):
        result.bad.extend(batch["bad"])
        result.seen += len(batch["bad"])
        if scores is not None:
            result.seen += len(labels)
            result.add(scores, labels)
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


def _score_videos(loaded, loader, *, fusion: str) -> tuple[EvalResult, dict]:
    """One model over a test loader: its EvalResult and {video_id: (scores (K,) cpu, label)}."""
    meta = loaded.meta
    result = EvalResult(num_classes=len(meta.classes))
    per_video = {}
    for batch, scores, labels in score_batches(loaded.model, loader, device="cpu", mean=meta.preprocessing.mean,
                                               std=meta.preprocessing.std, fusion=fusion):
        result.bad.extend(batch["bad"])
        result.seen += len(batch["bad"])
        if scores is None:
            continue
        result.seen += len(labels)
        result.add(scores, labels)
        per_video.update(zip(batch["video_id"], zip(scores.cpu(), labels.tolist())))
    return result, per_video


def evaluate_models(
    model_uris: list[str],
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

    One model: logs `test/top1_<clips>x<crops>` (and top-5, per-class accuracy, the confusion matrix)
    to the MLflow run `run_id` when given, so the protocol travels with the number (MLflow allows no
    `@` in metric names, hence `_`).

    Several models (an ensemble, e.g. H2CN's "(8+16)" rows): each samples the videos with its own
    recorded frames and sampling; a video's ensemble score is the mean of the models' per-video
    scores, each already fused over its views by `fusion` (`logits`: mean logits, `probs`: mean
    softmax). Each model's own accuracy is reported as `test/member<i>/top1_<p>` (i = 1.. in the
    order given) and the ensemble's as `test/ensemble/top1_<p>`, over the videos every member scored.
    For reference, the official H2CN (8+16) number (`pkl_to_results.py --multi_segments`) adds the two
    models' raw logits clipped at zero, no softmax: closest to `logits`; TDN's `test_models_*.py`
    with several `--weights` averages the models' logits (unless `--softmax`).
    """
    import json
    import tempfile
    from pathlib import Path

    import matplotlib.pyplot as plt

    from .. import tracking
    from ..data import dataset as data_dataset
    from ..data import loader as data_loader
    from ..data import manifest as data_manifest
    from ..models import folder

    if not model_uris:
        raise ValueError("no model to evaluate: pass --model at least once")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r} is not one of {list(FUSIONS)}")
    df = data_manifest.select_split(data_manifest.read_manifest(manifest), split)
    if df.empty:
        raise ValueError(f"{manifest}: no rows in split {split!r}; pass --split with one the manifest has")
    ensemble = len(model_uris) > 1
    if ensemble and df["video"].duplicated().any():
        repeated = sorted(df.loc[df["video"].duplicated(), "video"].astype(str).unique())[:5]
        raise ValueError(f"{manifest} split {split!r} lists videos more than once ({repeated}); an ensemble pairs "
                         "the models' scores by video: give each video one row")
    protocol = f"{num_clips}x{num_crops}"
    classes, members = None, []
    for uri in model_uris:
        loaded = folder.load_model(uri)
        meta = loaded.meta
        if classes is not None and meta.classes != classes:
            raise ValueError(f"{uri} predicts other classes than {model_uris[0]}; ensemble models of one class list")
        classes = meta.classes
        dataset = data_dataset.build_dataset(df, meta.preprocessing, train=False, classes=meta.classes,
                                             root=root or data_manifest.default_root(manifest), num_clips=num_clips,
                                             num_crops=num_crops, cache_dir=str(tracking.home() / "cache"))
        loader = data_loader.make_loader(dataset, batch_size=batch_size, shuffle=False,
                                          num_workers=num_loader_workers, timeout_s=300, drop_last=False)
        result, per_video = _score_videos(loaded, loader, fusion=fusion)
        members.append((uri, meta, result, per_video))
        del loaded

    if not ensemble:
        uri, meta, result, _ = members[0]
        prefix = "test/"
        summary = {"model": uri, "protocol": f"{num_clips} clips x {num_crops} crops, {fusion} averaged"}
    else:  # videos every member scored: mean of their per-video scores
        common = set.intersection(*(set(m[3]) for m in members))
        result = EvalResult(num_classes=len(classes))
        result.bad = sorted({bad for m in members for bad in m[2].bad})
        result.seen = len(df)
        order = [v for v in df["video"].astype(str) if v in common]
        for start in range(0, len(order), 256):
            chunk = order[start : start + 256]
            scores = torch.stack([torch.stack([m[3][v][0] for v in chunk]) for m in members]).mean(0)  # (N, K)
            result.add(scores, torch.tensor([members[0][3][v][1] for v in chunk]))
        prefix = "test/ensemble/"
        summary = {
            "model": list(model_uris),
            "protocol": f"{num_clips} clips x {num_crops} crops, {fusion} averaged over views, then over "
                        f"{len(members)} models",
            "members": [
                {"model": uri, "num_frames": meta.preprocessing.num_frames, "sampling": meta.preprocessing.sampling,
                 "snippet_frames": meta.preprocessing.snippet_frames,
                 f"test/member{i}/top1_{protocol}": r.top1, f"test/member{i}/top5_{protocol}": r.top5,
                 "num_videos": r.num_videos, "bad_samples": len(r.bad)}
                for i, (uri, meta, r, _) in enumerate(members, 1)
            ],
        }
    metrics = {f"{prefix}top1_{protocol}": result.top1, f"{prefix}top5_{protocol}": result.top5}
    summary.update(
        metrics, num_videos=result.num_videos, bad_samples=len(result.bad),
        per_class=dict(zip(classes, result.per_class)),
    )
    if run_id:
        for member in summary.get("members", []):
            metrics.update({k: v for k, v in member.items() if k.startswith("test/")})
        tracking.log_metrics(run_id, metrics, step=0)
        name = protocol if not ensemble else f"ensemble_{protocol}"
        with tempfile.TemporaryDirectory() as tmp:
            fig = confusion_figure(result.confusion, list(classes), f"test top-1 {result.top1:.3f} ({name})")
            fig.savefig(Path(tmp) / f"confusion_{name}.png", dpi=110)
            plt.close(fig)
            (Path(tmp) / f"summary_{name}.json").write_text(json.dumps(summary, indent=1))
            tracking.log_artifacts(run_id, tmp, "test")
    return summary
