"""The per-worker training function that Ray Train runs on every rank.

It reads like Ray Train's checkpointing example: get the checkpoint, restore from it, then per epoch
train (`epoch.train_one_epoch`), validate (`epoch.validate`) and report, with a checkpoint written by
rank 0 (`resume.save`), so that a worker-group restart or a rerun of the same run name resumes after
the last reported checkpoint. Inside an epoch, checkpoints come every `schedule.checkpoint_every_steps`
steps or `schedule.checkpoint_every_minutes` minutes (`resume.CheckpointSchedule` makes every rank take
them at the same step), and a resume from one skips the batches already trained on. Rank 0 owns side
effects (MLflow, printing, artifacts); every rank calls `ray.train.report` at every checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .. import __version__, cluster, flops, storage, tracking
from ..config import Config, from_dict
from ..models import folder
from ..models.meta import ModelMeta
from . import elastic, resume
from .bad_samples import BadSampleLog
from .context import RunContext
from .epoch import EpochStats, TrainStep, build_optimizer, build_scheduler, progress_line, train_one_epoch, validate
from .evaluate import EvalResult, confusion_figure, stats_tensors
from .inputs import input_format, make_datasets, worker_loader


def train_worker(loop_config: dict) -> dict:
    """Ray Train entry point. `loop_config` = {"config": Config dict, "ctx": driver-resolved paths/ids}."""
    import ray.train
    import ray.train.torch
    from workloads import get_workload
    from workloads.layers import as_method

    cfg = from_dict(loop_config["config"])
    ctx = RunContext.from_dict(loop_config["ctx"])
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + rank)
    checkpoint = ray.train.get_checkpoint()
    cluster.record_worker_nodes(ctx.run_id, rank=rank)  # every rank: where each one runs; rank 0 tags the run

    spec = get_workload(cfg.workload.name)
    model = spec.build(cfg.workload.params, num_classes=len(ctx.classes), num_frames=cfg.clip.num_frames)
    fmt = input_format(cfg)  # what the model eats (SV-Mix: its backbone's sampling and normalisation)
    if cfg.workload.init_from and checkpoint is None:
        report = load_init_weights(model, cfg.workload.init_from, cfg.workload.params)
        _log(rank, f"init_from {cfg.workload.init_from}: {report}")
    tracker = tracking.MetricBuffer(ctx.run_id)  # written by rank 0 only
    gmacs = _measure(cfg, fmt, model, tracker) if rank == 0 else None
    if cfg.compute.channels_last:
        model = model.to(memory_format=torch.channels_last)  # 4D (2D conv) weights only; 3D ones stay as they are
    method = as_method(model)
    step_module = ray.train.torch.prepare_model(TrainStep(method, label_smoothing=cfg.optim.label_smoothing))
    if cfg.compute.compile:
        step_module = torch.compile(step_module)
    train_set, val_set = make_datasets(cfg, ctx)
    train_loader, train_sampler = worker_loader(cfg, train_set, train=True, rank=rank, world=world)
    val_loader, _ = worker_loader(cfg, val_set, train=False, rank=rank, world=world)
    optimizer = build_optimizer(cfg, method, fused=cfg.compute.fused_optimizer and device.type == "cuda")
    # On fewer workers than the recipe's (elastic), gradient accumulation keeps its global batch and the
    # schedule counts the full-size run's optimiser steps.
    plan = elastic.WorldPlan(world=world, num_workers=cfg.compute.num_workers)
    full_steps = elastic.batches_per_rank(len(train_set), cfg.data.batch_size, cfg.compute.num_workers)
    scheduler = build_scheduler(cfg, optimizer, full_steps, lr_scale=plan.lr_scale)
    mean_t, std_t = stats_tensors(fmt.mean, fmt.std, device)
    epochs = cfg.schedule.epochs

    progress = resume.Progress()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            progress = resume.restore(Path(ckpt_dir), model=model, optimizer=optimizer, scheduler=scheduler,
                                      rank=rank, world=world)
        tracker.restore(progress.tracking)
        elastic.sync_lr(scheduler)  # the restored lr was computed for the world size that saved it
        inside = ""
        if progress.position:
            done = progress.position["step"]
            inside = (f" step {done}/{len(train_loader)} (inside epoch {progress.epochs_done + 1}: its first {done} "
                      "batches are skipped, not decoded)")
        # Named: a sweep's trials print into one driver's output.
        _log(rank, f"run '{ctx.run_name}': resumed from checkpoint at epoch {progress.epochs_done}/{epochs}{inside}")
    _log(rank, f"world size {plan.describe(cfg.data.batch_size)}")
    resumed_rng = torch.get_rng_state() if progress.position else None  # as restored: the next step's
    if rank == 0:
        _flush(tracker, rank)
    bad_log = BadSampleLog(rank, already=progress.bad_examples)
    if progress.epochs_done >= epochs and progress.metrics:
        # Nothing left to train: the workers finished after the driver died. The last epoch is reported
        # again (no checkpoint), or a Tune trial restored onto this run would end with no result at all.
        ray.train.report(progress.metrics)

    schedule = resume.CheckpointSchedule(every_steps=cfg.schedule.checkpoint_every_steps,
                                         every_minutes=cfg.schedule.checkpoint_every_minutes, device=device)
    saver = _Saver(rank, tracker, model=model, optimizer=optimizer, scheduler=scheduler)
    result = None
    for epoch in range(progress.epochs_done, epochs):
        position = progress.position or {}  # set only for the epoch a checkpoint inside it resumes
        train_sampler.set_epoch(epoch, start=position.get("samples", 0))
        train_set.set_epoch(epoch)
        start_step = position.get("step", 0)  # batches; a checkpoint inside the epoch is at an optimiser step
        method.on_epoch_start(epoch, epochs, start_step=start_step // plan.accum_steps,
                              steps_per_epoch=math.ceil((start_step + len(train_loader)) / plan.accum_steps))
        before = progress

        def after_step(step: int, num_steps: int, so_far, epoch=epoch, start_step=start_step, before=before) -> None:
            if step < num_steps and schedule.due(step):  # the epoch's last step gets the epoch's checkpoint
                _checkpoint_inside(saver, before, epoch, step, so_far(), sampler=train_sampler,
                                   batches=step - start_step, batch_size=cfg.data.batch_size, world=world)
                schedule.saved()

        stats = train_one_epoch(
            step_module, BadDataGuard(cfg, train_loader, len(train_set)), optimizer, scheduler, device=device,
            mean=mean_t, std=std_t,
            grad_clip=cfg.optim.grad_clip, use_amp=cfg.compute.amp and device.type == "cuda",
            on_step_end=method.on_step_end, channels_last=cfg.compute.channels_last, on_bad=bad_log.met,
            log=_step_log(rank, world, epoch, epochs, later_s=progress.metrics.get("val/seconds", 0.0)),
            accum_steps=plan.accum_steps, start_step=start_step, carried=resume.carried_stats(progress, rank, world),
            rng_state=resumed_rng if position else None, after_step=after_step,
        )
        val_start = time.perf_counter()
        scored = validate(method, val_loader, device=device, mean=fmt.mean, std=fmt.std,
                          num_classes=len(ctx.classes), fusion=cfg.eval.fusion)
        val_seconds = time.perf_counter() - val_start
        progress = _epoch_end(cfg, epoch, stats, scored, val_seconds, progress, method=method, optimizer=optimizer,
                              bad_log=bad_log, device=device, gmacs=gmacs)
        progress.metrics.update(plan.metrics())
        if rank == 0:
            # Written before the report (a scheduler may stop the trial as soon as it sees it); the
            # checkpoint carries whatever MLflow has not confirmed, so neither a restart nor an outage
            # loses it (steps already written are skipped when an epoch is redone).
            tracker.add({k: v for k, v in progress.metrics.items() if k != "epoch"}, step=epoch + 1)
            _flush(tracker, rank)
        saver.report(progress, progress.metrics)
        schedule.saved()
        result = next(iter(scored.values()))  # the primary variant

    if rank == 0:
        _finalise(cfg, ctx, spec, model, result, progress.bad_examples, tracker)
    return progress.metrics


def _measure(cfg: Config, fmt, model: nn.Module, tracker: tracking.MetricBuffer) -> float:
    """Rank 0: the model's GMACs and parameters per clip, logged at step 0; returns the GMACs."""
    clip_shape = (1, fmt.clip_frames, 3, fmt.size_px, fmt.size_px)
    compute = flops.measure(model, clip_shape)
    tracker.add({"model/gmacs": compute.gmacs, "model/params": compute.params}, step=0)
    _log(0, f"{cfg.workload.name}: {compute.gmacs:.2f} GMACs/clip, {compute.params / 1e6:.2f} M params")
    return compute.gmacs


def _step_log(rank: int, world: int, epoch: int, epochs: int, *, later_s: float = 0.0):
    """`train_one_epoch`'s `log`: progress lines on rank 0, throughput over all ranks, ETAs (each later
    epoch counted as this one's steps plus `later_s`, the last validation's seconds)."""
    def log(i: int, n: int, st: EpochStats) -> None:
        _log(rank, progress_line(st, step=i, num_steps=n, epoch=epoch, epochs=epochs, world=world, later_s=later_s))

    return log


class _Saver:
    """Writes and reports checkpoints: rank 0 writes `state.pt` (with every rank's RNG, gathered), every
    rank calls `ray.train.report` with it."""

    def __init__(self, rank: int, tracker: tracking.MetricBuffer, *, model, optimizer, scheduler):
        self.rank, self.tracker = rank, tracker
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def report(self, progress: resume.Progress, metrics: dict) -> float:
        """Every rank: checkpoints `progress` (named by `resume.checkpoint_name`); returns rank 0's
        seconds spent writing it."""
        import ray.train

        rngs = _all_gather(resume.rng_state())
        started = time.perf_counter()
        # A scratch folder, not a TemporaryDirectory: a worker is often killed inside `report` (Tune stops
        # a trial as it reports), and the next worker on the node removes what it left.
        with storage.scratch_dir("checkpoint") as tmp:
            ckpt = None
            if self.rank == 0:
                progress.tracking = self.tracker.state()
                resume.save(tmp, progress, model=self.model, optimizer=self.optimizer,
                            scheduler=self.scheduler, rng_by_rank=rngs)
                ckpt = ray.train.Checkpoint.from_directory(str(tmp))
            written = time.perf_counter() - started
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=resume.checkpoint_name(progress))
        return written


def _checkpoint_inside(saver: _Saver, before: resume.Progress, epoch: int, step: int, stats: EpochStats, *,
                       sampler, batches: int, batch_size: int, world: int) -> None:
    """Every rank, at the same step inside epoch `epoch`: a checkpoint with the sampler position (the
    next batch's) and every rank's statistics of the epoch so far. Reported with the last epoch's
    metrics plus `resume.MID_EPOCH_KEY` (a Tune sweep does not count it as a result)."""
    started = time.perf_counter()
    mid = resume.inside_epoch(before, epoch=epoch, step=step, samples=sampler.position_after(batches, batch_size),
                              world=world, stats_by_rank=_all_gather(resume.stats_state(stats)),
                              bad_examples=_gather_distinct(before.bad_examples + stats.bad))
    written = saver.report(mid, {**before.metrics, "epoch": epoch, resume.MID_EPOCH_KEY: step})
    _log(saver.rank, f"checkpoint {resume.checkpoint_name(mid)} (epoch {epoch + 1} step {step}): state written in "
                     f"{written:.2f}s, reported in {time.perf_counter() - started:.2f}s")


def _epoch_end(cfg: Config, epoch: int, stats: EpochStats, scored: dict[str, EvalResult], val_seconds: float,
               progress: resume.Progress, *, method, optimizer, bad_log: BadSampleLog, device,
               gmacs: float | None) -> resume.Progress:
    """Every rank: sums this epoch's counts over ranks, names and bounds the bad samples, prints the
    epoch's line (rank 0), and returns the progress with the epoch's metrics (the same on every rank,
    `model/gmacs` on rank 0 only)."""
    val = next(iter(scored.values()))  # the primary variant
    extras = dict(stats.extras_sum)
    counts = _all_reduce_sums(device, [stats.loss * stats.seen, stats.seen, len(stats.bad), *extras.values()])
    loss_sum, seen, bad = counts[0], counts[1], int(counts[2])
    bad_examples = _gather_distinct(progress.bad_examples + stats.bad + val.bad)
    bad_log.end_epoch(epoch + 1, bad_examples, bad)
    _check_bad_fraction(cfg, bad, seen + bad, bad_examples)
    metrics = {
        "epoch": epoch + 1,
        "train/loss": loss_sum / max(1, seen),
        "train/clips_per_s": seen / max(1e-9, stats.seconds),
        "train/data_time_s": stats.data_time_s,
        "train/step_time_s": stats.step_time_s,
        "train/epoch_s": stats.seconds,
        "val/seconds": val_seconds,
        "train/lr": optimizer.param_groups[0]["lr"],
        "val/top1": val.top1,
        "val/top5": val.top5,
        "data/bad_samples": len(bad_examples),  # distinct bad samples met so far, on every rank
    }
    if gmacs is not None:  # rank 0's metrics are the ones Ray and Tune keep
        metrics["model/gmacs"] = gmacs
    metrics.update({f"train/{k}": v / max(1, seen) for k, v in zip(extras, counts[3:])})
    for name, scores in scored.items():
        if name:
            metrics.update({f"val/{name}/top1": scores.top1, f"val/{name}/top5": scores.top5})
    metrics.update({f"val/{k}": v for k, v in method.eval_stats().items()})  # what validating really spent
    _log(bad_log.rank, f"epoch {epoch + 1}/{cfg.schedule.epochs} done in {stats.seconds:.1f}s: train/loss "
                       f"{metrics['train/loss']:.4f} val/top1 {val.top1:.3f} val/top5 {val.top5:.3f} "
                       f"bad {len(bad_examples)}")
    return resume.Progress(epochs_done=epoch + 1, metrics=metrics, bad_examples=bad_examples,
                           tracking=progress.tracking)


def _log(rank: int, message: str) -> None:
    # Not print(): Ray Train patches print to tee into its logger, which shows every line twice.
    if rank == 0:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


class BadDataGuard:
    """A training loader that stops the run as soon as this rank's bad samples pass
    `data.max_bad_fraction` of the epoch's samples on all ranks (`total`): the epoch's end would then
    refuse the run for certain, so a wrong data root fails in its first batches, not after an epoch of
    nothing, with the message the epoch's end gives."""

    def __init__(self, cfg: Config, loader, total: int):
        self.cfg, self.loader, self.total = cfg, loader, total

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        seen, bad = 0, []
        for batch in self.loader:
            seen += len(batch["label"])
            bad.extend(batch["bad"])
            if len(bad) > self.cfg.data.max_bad_fraction * self.total:  # so bad / (seen + bad) is above it too
                _check_bad_fraction(self.cfg, len(bad), seen + len(bad), list(dict(bad).items()))
            yield batch


def _check_bad_fraction(cfg: Config, bad: int, seen: int, examples: list) -> None:
    if seen and bad / seen > cfg.data.max_bad_fraction:
        shown = "; ".join(f"{vid}: {why}" for vid, why in examples[:5])
        raise RuntimeError(
            f"{bad} of {seen} samples ({bad / seen:.1%}) could not be loaded, above data.max_bad_fraction="
            f"{cfg.data.max_bad_fraction}. First ones: {shown}. Run `actionlab data check MANIFEST` to list "
            f"every bad file, fix or drop them, or raise data.max_bad_fraction."
        )


def _flush(tracker: tracking.MetricBuffer, rank: int) -> None:
    """Writes queued metrics; an unreachable tracking server is reported and training goes on."""
    was_down = tracker.down
    if tracker.flush():
        if was_down:
            _log(rank, "MLflow reachable again: wrote the buffered metrics")
    else:
        _log(rank, f"MLflow unreachable ({tracker.outage.get('error', '')}); training goes on, "
                   f"{len(tracker.pending)} metric steps kept to write later")


def _all_gather(value) -> list:
    """Every rank's `value`, in rank order (`[value]` without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, value)
        return parts
    return [value]


def _gather_distinct(pairs: list) -> list:
    """Every rank's (video, reason) pairs, each video once, in the order first met (rank by rank)."""
    return list(dict(pair for part in _all_gather(pairs) for pair in part).items())


def _all_reduce_sums(device, values: list) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor([float(v) for v in values], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def model_meta(cfg: Config, spec, class_names) -> ModelMeta:
    """Everything `folder.load_model` needs to rebuild the network (every params value) and preprocess a video."""
    return ModelMeta(
        workload=spec.name,
        params=cfg.workload.params,
        classes=tuple(class_names),
        preprocessing=input_format(cfg),
        actionlab_version=__version__,
    )


def _finalise(cfg: Config, ctx: RunContext, spec, model: nn.Module, val, bad_examples: list,
              tracker: tracking.MetricBuffer) -> None:
    """Rank 0: buffered metrics, the final checkpoint, confusion matrix and bad-sample list in MLflow.

    An unreachable tracking server is waited for (`ACTIONLAB_MLFLOW_WAIT_S`); what happened during an
    outage is written to the run's `actionlab.tracking_outage` tag.
    """
    import matplotlib.pyplot as plt

    run_id = ctx.run_id
    tracker.finish()
    with storage.scratch_dir("model") as out:
        folder.save_model_dir(out / folder.CHECKPOINT_ARTIFACT, model, model_meta(cfg, spec, ctx.classes))
        tracking.log_artifacts(run_id, out / folder.CHECKPOINT_ARTIFACT, folder.CHECKPOINT_ARTIFACT)
        if val is not None:
            evals = out / "eval"
            evals.mkdir()
            fig = confusion_figure(val.confusion, list(ctx.classes), f"{ctx.run_name}: val top-1 {val.top1:.3f}")
            fig.savefig(evals / "confusion_matrix.png", dpi=110)
            plt.close(fig)
            (evals / "per_class.json").write_text(json.dumps(dict(zip(ctx.classes, val.per_class)), indent=1))
            tracking.log_artifacts(run_id, evals, "eval")
    if bad_examples:  # one line per bad sample, however many epochs met it
        unique = dict(bad_examples)
        tracking.log_text(run_id, "\n".join(f"{vid}\t{why}" for vid, why in unique.items()), "data/bad_samples.tsv")
    if tracker.outage:
        tracking.set_tags(run_id, {tracking.OUTAGE_TAG: tracker.outage_note()})


def load_init_weights(model: nn.Module, uri: str, params=None) -> str:
    """Warm start from a registered model or checkpoint dir; a head of another shape is re-created.

    The checkpoint's meta.json is read as for any loading (a record this code cannot rebuild is refused);
    params of this run that differ from the recorded ones (`params`, weight source aside) are named.

    Returns a one-line report of loaded / skipped (shape mismatch) / newly initialised tensors.
    """
    from workloads.registry import without_weights

    path = folder.resolve_model_dir(uri)
    recorded = folder.read_meta(path)
    state = folder.load_weights(path / folder.MODEL_FILE)
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    unexpected = sorted(k for k in state if k not in own)
    new = sorted(k for k in own if k not in loaded)
    model.load_state_dict(loaded, strict=False)
    differs = ""
    if params is not None and type(params) is not type(recorded.params):
        differs = f"; from a '{recorded.workload}' checkpoint"
    elif params is not None:
        ours, theirs = asdict(without_weights(params)), asdict(without_weights(recorded.params))
        changed = {k: f"{theirs[k]!r} -> {v!r}" for k, v in ours.items() if theirs[k] != v}
        differs = f"; this run's params differ from the checkpoint's: {changed}" if changed else ""
    return (
        f"loaded {len(loaded)} tensors; skipped {len(skipped)} with other shapes {skipped[:6]}; "
        f"unexpected {len(unexpected)} {unexpected[:6]}; newly initialised {len(new)} {new[:6]}{differs}"
    )
