"""The per-worker training function that Ray Train runs on every rank.

Rank 0 owns side effects (MLflow, printing, artifacts); every rank calls `ray.train.report` once per
epoch. A checkpoint (model, optimiser, scheduler, scaler, epoch, RNG) is reported every epoch and
restored automatically after a worker-group restart or a rerun of the same run name.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import flops, storage, tracking
from ..config import Config, from_dict
from ..data import dataset as data_dataset
from ..data import manifest as data_manifest
from ..data import transforms as data_transforms
from .bad_samples import BadSampleLog
from .evaluate import all_reduce_result, confusion_figure, evaluate, normalise, stats_tensors

STATE_FILE = "state.pt"


class TrainStep(nn.Module):
    """Wraps a workload so DDP sees one forward per step, hook or not.

    A workload with a `training_step(clips, labels)` hook owns its loss (mixing, gating,
    restoration); the others get cross-entropy on their logits.
    """

    def __init__(self, model: nn.Module, *, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> dict:
        hook = getattr(self.model, "training_step", None)
        if hook is not None:
            return hook(clips, labels)
        logits = self.model(clips)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits}


def build_optimizer(cfg: Config, model: nn.Module, *, fused: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW; a workload's `param_groups()` scales lr / weight decay per group (e.g. AFNet's
    navigation x10, SLLM's encoder x0.1), as in the methods' official code. `fused` runs the update
    as one kernel per step (GPUs)."""
    if hasattr(model, "param_groups"):
        groups = [
            {
                "params": [p for p in g["params"] if p.requires_grad],
                "lr": cfg.optim.lr * g.get("lr_scale", 1.0),
                "weight_decay": cfg.optim.weight_decay * g.get("weight_decay_scale", 1.0),
            }
            for g in model.param_groups()
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    extra = {"fused": True} if fused else {}
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, **extra)
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                           **extra)


def build_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    """Per-step LR multiplier: linear warmup, then cosine / step / constant."""
    total = max(1, cfg.schedule.epochs * steps_per_epoch)
    warmup = cfg.schedule.warmup_epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in cfg.schedule.lr_steps]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule.lr_schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule.lr_schedule == "step":
            return 0.1 ** sum(step >= m for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class EpochStats:
    """What one pass over the training loader did (this rank only)."""

    loss: float  # mean over the clips seen
    seen: int  # clips trained on
    bad: list  # (video_id, reason) of the samples that could not be loaded
    extras_sum: dict  # clip-weighted sums of the method's scalar outputs (e.g. keep_ratio)
    data_time_s: float  # waiting for batches
    step_time_s: float  # forward + backward + optimiser
    seconds: float  # the whole epoch

    @property
    def clips_per_s(self) -> float:
        return self.seen / max(1e-9, self.seconds)


def train_one_epoch(
    step_module: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    *,
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    grad_clip: float = 0.0,
    use_amp: bool = False,
    on_step_end=None,
    channels_last: bool = False,
    on_bad=None,
    log=None,
) -> EpochStats:
    """One epoch of plain PyTorch training: the same code under Ray Train and in `bench train --vs-plain`.

    Args:
        step_module: `TrainStep` (possibly DDP-wrapped): `(clips, labels) -> {"loss", ...}`.
        loader: yields `collate_clips` batches (uint8 clips; bad samples listed, not raised).
        optimizer, scheduler: stepped once per batch.
        device: where the clips go; normalisation happens there.
        mean, std: (1, 1, C, 1, 1) normalisation tensors on `device`.
        grad_clip: max gradient norm (0 disables).
        use_amp: bf16 autocast.
        on_step_end: the method's per-step hook (e.g. an EMA update), or None.
        channels_last: clips in channels-last memory order (faster convolutions on GPUs).
        on_bad: called with each batch's list of bad (video_id, reason) as it arrives, or None.
        log: `log(step, num_steps, stats_so_far)` about four times an epoch, or None.
    """
    step_module.train()
    num_steps = len(loader)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)  # summed on the device: no sync per step
    seen, bad, extras = 0, [], {}
    data_time = step_time = 0.0
    start = tick = time.perf_counter()

    def so_far(now: float) -> EpochStats:
        return EpochStats(float(loss_sum) / max(1, seen), seen, bad, extras, data_time, step_time, now - start)

    for i, batch in enumerate(loader):
        bad.extend(batch["bad"])
        if batch["bad"] and on_bad is not None:
            on_bad(batch["bad"])
        if len(batch["label"]) == 0:
            tick = time.perf_counter()
            continue
        clips = batch["clip"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        t_data = time.perf_counter()
        data_time += t_data - tick
        x = normalise(clips, mean, std)  # (B, T, C, H, W) float
        if channels_last:
            x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(x.shape)  # (B, T, C, H, W)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = step_module(x, labels)
        loss = out["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(step_module.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        if on_step_end is not None:
            on_step_end()
        b = labels.shape[0]
        loss_sum += loss.detach().double() * b
        seen += b
        for key, value in out.items():
            if key not in ("loss", "logits") and torch.is_tensor(value) and value.numel() == 1:
                extras[key] = extras.get(key, 0.0) + float(value) * b
        tick = time.perf_counter()
        step_time += tick - t_data
        if log is not None and ((i + 1) % max(1, num_steps // 4) == 0 or i + 1 == num_steps):
            log(i + 1, num_steps, so_far(tick))
    return so_far(time.perf_counter())


def make_datasets(cfg: Config, spec, ctx: dict):
    """Train and val datasets from the manifest(s) resolved by the driver."""
    class_names = ctx["classes"]
    flip_pairs = data_transforms.flip_pairs_from_names(class_names) if cfg.data.flip == "swap_pairs" else {}
    fmt = spec.input_for(cfg.workload.params)  # sampling may depend on params (SV-Mix: its backbone's)
    common = dict(
        root=ctx["root"],
        num_classes=len(class_names),
        sampling=fmt.sampling,
        snippet_frames=fmt.snippet_frames,
        num_frames=cfg.clip.num_frames,
        stride=cfg.clip.stride,
        size_px=cfg.clip.size_px,
        resize_px=cfg.clip.resize_px,
        scales=cfg.clip.scales,
        flip=cfg.data.flip,
        flip_pairs=flip_pairs,
        seed=cfg.seed,
        cache_dir=ctx.get("cache_dir"),
    )
    train_all = data_manifest.read_manifest(ctx["manifest"])
    val_all = data_manifest.read_manifest(ctx["val_manifest"])
    train_df = data_manifest.select_split(train_all, "train")
    val_df = data_manifest.select_split(val_all, ctx["val_split"])

    def decoder(df) -> str:
        return cfg.data.decoder if cfg.data.decoder != "auto" else data_manifest.preferred_decoder(df)

    train = data_dataset.VideoClipDataset(df=train_df, train=True, decoder=decoder(train_all), **common)
    # Training keeps the cheap protocol (1 clip x 1 crop); `actionlab eval` runs the full one.
    val = data_dataset.VideoClipDataset(df=val_df, train=False, num_clips=1, num_crops=1, decoder=decoder(val_all),
                                        **common)
    return train, val


def _loader(cfg: Config, dataset, *, train: bool, rank: int, world: int):
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=train, seed=cfg.seed, drop_last=False
    )
    if cfg.data.engine == "ray":
        from ..data.ray_ingest import RayClipLoader

        loader = RayClipLoader(dataset, sampler, batch_size=cfg.data.batch_size,
                               drop_last=train and len(dataset) >= cfg.data.batch_size * world * 2)
        return loader, sampler
    loader = data_dataset.make_loader(
        dataset,
        batch_size=cfg.data.batch_size,
        shuffle=False,  # the sampler shuffles, reproducibly per epoch
        num_workers=cfg.data.num_loader_workers,
        timeout_s=cfg.data.loader_timeout_s,
        sampler=sampler,
        drop_last=train and len(dataset) >= cfg.data.batch_size * world * 2,
    )
    return loader, sampler


def _log(rank: int, message: str) -> None:
    # Not print(): Ray Train patches print to tee into its logger, which shows every line twice.
    if rank == 0:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


def load_state(path: Path) -> dict:
    """A resume state written by this loop: tensors and plain containers only (`weights_only=True`).

    Raises:
        ValueError: the file holds anything else (e.g. a pickle that would run code); it is not executed.
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path} is not a resume state this platform wrote and was refused unexecuted ({first}). "
            "Delete that checkpoint folder to resume from an earlier one, or start afresh with "
            "--set tracking.run_name=NEW_NAME"
        ) from None


def _check_bad_fraction(cfg: Config, bad: int, seen: int, examples: list) -> None:
    if seen and bad / seen > cfg.data.max_bad_fraction:
        shown = "; ".join(f"{vid}: {why}" for vid, why in examples[:5])
        raise RuntimeError(
            f"{bad} of {seen} samples ({bad / seen:.1%}) could not be loaded, above data.max_bad_fraction="
            f"{cfg.data.max_bad_fraction}. First ones: {shown}. Run `actionlab data check MANIFEST` to list "
            f"every bad file, fix or drop them, or raise data.max_bad_fraction."
        )


def train_worker(loop_config: dict) -> dict:
    """Ray Train entry point. `loop_config` = {"config": Config dict, "ctx": driver-resolved paths/ids}."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(loop_config["config"])
    ctx = loop_config["ctx"]
    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)

    from workloads import get_workload

    spec = get_workload(cfg.workload.name)
    class_names = ctx["classes"]
    num_classes = len(class_names)
    model = spec.build(cfg.workload.params, num_classes=num_classes, num_frames=cfg.clip.num_frames)
    fmt = spec.input_for(cfg.workload.params)  # sampling and normalisation (SV-Mix: its backbone's)
    if cfg.workload.init_from and ray.train.get_checkpoint() is None:
        report = load_init_weights(model, cfg.workload.init_from)
        _log(rank, f"init_from {cfg.workload.init_from}: {report}")

    run_id = ctx["run_id"]
    tracker = tracking.MetricBuffer(run_id)  # used on rank 0 only
    compute = None
    if rank == 0:
        clip_shape = (1, fmt.clip_frames(cfg.clip.num_frames), 3, cfg.clip.size_px, cfg.clip.size_px)
        compute = flops.measure(model, clip_shape)
        tracker.add({"model/gmacs": compute.gmacs, "model/params": compute.params}, step=0)
        _log(rank, f"{cfg.workload.name}: {compute.gmacs:.2f} GMACs/clip, {compute.params / 1e6:.2f} M params")

    channels_last = cfg.compute.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # 4D (2D conv) weights only; 3D ones stay as they are
    step_module = ray.train.torch.prepare_model(TrainStep(model, label_smoothing=cfg.optim.label_smoothing))
    if cfg.compute.compile:
        step_module = torch.compile(step_module)
    train_set, val_set = make_datasets(cfg, spec, ctx)
    train_loader, train_sampler = _loader(cfg, train_set, train=True, rank=rank, world=world)
    val_loader, _ = _loader(cfg, val_set, train=False, rank=rank, world=world)
    optimizer = build_optimizer(cfg, model, fused=cfg.compute.fused_optimizer and device.type == "cuda")
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    use_amp = cfg.compute.amp and device.type == "cuda"
    mean_t, std_t = stats_tensors(fmt.mean, fmt.std, device)

    start_epoch, bad_examples, metrics = 0, [], {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_state(Path(ckpt_dir) / STATE_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = int(state["epoch"]) + 1
        metrics = dict(state.get("metrics", {}))
        bad_examples = [(str(vid), str(why)) for vid, why in state.get("bad_examples", [])]
        tracker.restore(state.get("tracking"))
        _log(rank, f"resumed from checkpoint at epoch {start_epoch}/{cfg.schedule.epochs}")
    if rank == 0:
        _flush(tracker, rank)
    bad_log = BadSampleLog(rank, already=bad_examples)

    epochs = cfg.schedule.epochs
    step_end = getattr(model, "on_step_end", None)
    result = None
    if start_epoch >= epochs and metrics:
        # Nothing left to train: the workers finished after the driver died. The last epoch is reported
        # again (no checkpoint), or a Tune trial restored onto this run would end with no result at all.
        ray.train.report(metrics)
    for epoch in range(start_epoch, epochs):
        hook = getattr(model, "on_epoch_start", None)
        if hook is not None:
            hook(epoch, epochs)
        train_sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        stats = train_one_epoch(
            step_module, train_loader, optimizer, scheduler, device=device, mean=mean_t, std=std_t,
            grad_clip=cfg.optim.grad_clip, use_amp=use_amp, on_step_end=step_end, channels_last=channels_last,
            on_bad=bad_log.met,
            log=lambda i, n, st: _log(rank, f"epoch {epoch + 1}/{epochs} step {i}/{n} loss {st.loss:.4f} "
                                            f"{st.clips_per_s * world:.1f} clips/s (data {st.data_time_s:.1f}s, "
                                            f"compute {st.step_time_s:.1f}s)"),
        )
        bad_examples.extend(stats.bad)
        loss_sum, seen, bad, extras = stats.loss * stats.seen, stats.seen, len(stats.bad), dict(stats.extras_sum)
        data_time, step_time, epoch_time = stats.data_time_s, stats.step_time_s, stats.seconds

        val_start = time.perf_counter()
        variants = model.eval_variants() if hasattr(model, "eval_variants") else {"": model}
        scored = {
            name: all_reduce_result(
                evaluate(m, val_loader, device=device, mean=fmt.mean, std=fmt.std, num_classes=num_classes,
                         fusion=cfg.eval.fusion),
                device,
            )
            for name, m in variants.items()
        }
        val = next(iter(scored.values()))  # the primary variant
        val_seconds = time.perf_counter() - val_start
        counts = _all_reduce_sums(device, [loss_sum, seen, bad, *extras.values()])
        loss_sum, seen, bad = counts[0], counts[1], int(counts[2])
        bad_examples = _gather_distinct(bad_examples + val.bad)
        total_bad = len(bad_examples)  # distinct bad samples met so far, on every rank
        bad_log.end_epoch(epoch + 1, bad_examples, bad)
        _check_bad_fraction(cfg, bad, seen + bad, bad_examples)
        metrics = {
            "epoch": epoch + 1,
            "train/loss": loss_sum / max(1, seen),
            "train/clips_per_s": seen / max(1e-9, epoch_time),
            "train/data_time_s": data_time,
            "train/step_time_s": step_time,
            "train/epoch_s": epoch_time,
            "val/seconds": val_seconds,
            "train/lr": optimizer.param_groups[0]["lr"],
            "val/top1": val.top1,
            "val/top5": val.top5,
            "data/bad_samples": total_bad,
        }
        if compute is not None:  # rank 0's metrics are the ones Ray and Tune keep
            metrics["model/gmacs"] = compute.gmacs
        metrics.update({f"train/{k}": v / max(1, seen) for k, v in zip(extras, counts[3:])})
        for name, scores in scored.items():
            if name:
                metrics.update({f"val/{name}/top1": scores.top1, f"val/{name}/top5": scores.top5})
        if hasattr(model, "eval_stats"):  # what a data-dependent method really spent while validating
            metrics.update({f"val/{k}": v for k, v in model.eval_stats().items()})
        _log(
            rank,
            f"epoch {epoch + 1}/{epochs} done in {epoch_time:.1f}s: train/loss {metrics['train/loss']:.4f} "
            f"val/top1 {val.top1:.3f} val/top5 {val.top5:.3f} bad {total_bad}",
        )
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                # Written before the report (a scheduler may stop the trial as soon as it sees it);
                # the checkpoint carries whatever MLflow has not confirmed, so neither a restart nor an
                # outage loses it (steps already written are skipped when an epoch is redone).
                tracker.add({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
                _flush(tracker, rank)
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "metrics": metrics,
                        "torch_rng": torch.get_rng_state(),
                        "bad_examples": [[vid, why] for vid, why in dict(bad_examples).items()],
                        "tracking": tracker.state(),
                    },
                    Path(tmp) / STATE_FILE,
                )
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch + 1:04d}")
        result = val

    if rank == 0:
        _finalise(cfg, ctx, spec, model, result, bad_examples, tracker)
    return metrics


def _flush(tracker: tracking.MetricBuffer, rank: int) -> None:
    """Writes queued metrics; an unreachable tracking server is reported and training goes on."""
    was_down = tracker.down
    if tracker.flush():
        if was_down:
            _log(rank, "MLflow reachable again: wrote the buffered metrics")
    else:
        _log(rank, f"MLflow unreachable ({tracker.outage.get('error', '')}); training goes on, "
                   f"{len(tracker.pending)} metric steps kept to write later")


def _gather_distinct(pairs: list) -> list:
    """Every rank's (video, reason) pairs, each video once, in the order first met (rank by rank)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, pairs)
        pairs = [pair for part in parts for pair in part]
    return list(dict(pairs).items())


def _all_reduce_sums(device, values: list) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor([float(v) for v in values], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def model_meta(cfg: Config, spec, class_names: list[str]) -> dict:
    """Everything `tracking.load_model` needs to rebuild the network and preprocess a video."""
    fmt = spec.input_for(cfg.workload.params)
    return {
        "workload": spec.name,
        "params": dict(cfg.workload.params),
        "classes": list(class_names),
        "num_frames": cfg.clip.num_frames,
        "stride": cfg.clip.stride,
        "size_px": cfg.clip.size_px,
        "resize_px": cfg.clip.resize_px,
        "sampling": fmt.sampling,
        "snippet_frames": fmt.snippet_frames,
        "mean": list(fmt.mean),
        "std": list(fmt.std),
    }


def _finalise(cfg: Config, ctx: dict, spec, model: nn.Module, val, bad_examples: list,
              tracker: tracking.MetricBuffer) -> None:
    """Rank 0: buffered metrics, the final checkpoint, confusion matrix and bad-sample list in MLflow.

    An unreachable tracking server is waited for (`ACTIONLAB_MLFLOW_WAIT_S`); what happened during an
    outage is written to the run's `actionlab.tracking_outage` tag.
    """
    import matplotlib.pyplot as plt

    run_id = ctx["run_id"]
    tracker.finish()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        tracking.save_model_dir(out / tracking.CHECKPOINT_ARTIFACT, model, model_meta(cfg, spec, ctx["classes"]))
        tracking.log_artifacts(run_id, out / tracking.CHECKPOINT_ARTIFACT, tracking.CHECKPOINT_ARTIFACT)
        if val is not None:
            evals = out / "eval"
            evals.mkdir()
            fig = confusion_figure(val.confusion, ctx["classes"], f"{ctx['run_name']}: val top-1 {val.top1:.3f}")
            fig.savefig(evals / "confusion_matrix.png", dpi=110)
            plt.close(fig)
            (evals / "per_class.json").write_text(json.dumps(dict(zip(ctx["classes"], val.per_class)), indent=1))
            tracking.log_artifacts(run_id, evals, "eval")
    if bad_examples:  # one line per bad sample, however many epochs met it
        unique = dict(bad_examples)
        tracking.log_text(run_id, "\n".join(f"{vid}\t{why}" for vid, why in unique.items()), "data/bad_samples.tsv")
    if tracker.outage:
        tracking.set_tags(run_id, {tracking.OUTAGE_TAG: tracker.outage_note()})


def load_init_weights(model: nn.Module, uri: str) -> str:
    """Warm start from a registered model or checkpoint dir; a head of another shape is re-created.

    Returns a one-line report of loaded / skipped (shape mismatch) / newly initialised tensors.
    """
    path = tracking.resolve_model_dir(uri)
    state = tracking.load_weights(path / tracking.MODEL_FILE)
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    unexpected = sorted(k for k in state if k not in own)
    new = sorted(k for k in own if k not in loaded)
    model.load_state_dict(loaded, strict=False)
    return (
        f"loaded {len(loaded)} tensors; skipped {len(skipped)} with other shapes {skipped[:6]}; "
        f"unexpected {len(unexpected)} {unexpected[:6]}; newly initialised {len(new)} {new[:6]}"
    )
