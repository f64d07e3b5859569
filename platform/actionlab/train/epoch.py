"""The plain-PyTorch core of training: one epoch, one validation pass, the optimiser and LR schedule.

Nothing here knows Ray or MLflow: the Ray Train worker (`train.loop`) and `bench train --vs-plain`
run the same functions, and tests run them in-process. The model arrives as a
`workloads.layers.method.Method` (a plain module adapted once by `as_method`); its hooks are called
directly.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from .evaluate import EvalResult, all_reduce_result, evaluate, normalise


class TrainStep(nn.Module):
    """Wraps a method so DDP sees one forward per step: its `training_step`, plus cross-entropy on its
    logits when it leaves the loss to the loop."""

    def __init__(self, method: nn.Module, *, label_smoothing: float = 0.0):
        super().__init__()
        self.method = method
        self.label_smoothing = label_smoothing

    def forward(self, clips: torch.Tensor, labels: torch.Tensor) -> dict:
        out = self.method.training_step(clips, labels)
        if "loss" not in out:
            logits = out["logits"]  # (B, K)
            out = {**out, "loss": F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)}
        return out


def build_optimizer(cfg: Config, method, *, fused: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW over the method's `param_groups()`, each scaling lr / weight decay (e.g. AFNet's
    navigation x10, SLLM's encoder x0.1), as in the methods' official code. `fused` runs the update
    as one kernel per step (GPUs)."""
    groups = [
        {
            "params": [p for p in g["params"] if p.requires_grad],
            "lr": cfg.optim.lr * g.get("lr_scale", 1.0),
            "weight_decay": cfg.optim.weight_decay * g.get("weight_decay_scale", 1.0),
        }
        for g in method.param_groups()
    ]
    groups = [g for g in groups if g["params"]]
    extra = {"fused": True} if fused else {}
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, **extra)
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                           **extra)


def build_scheduler(cfg: Config, optimizer, steps_per_epoch: int, *, lr_scale: float = 1.0):
    """Per-step LR multiplier: linear warmup, then cosine / step / constant, times `lr_scale`.

    `steps_per_epoch` counts optimiser steps of the full-size run (`train.elastic`), whatever the world
    size now, so the step count a checkpoint carries means the same fraction of training after a resize.
    """
    total = max(1, cfg.schedule.epochs * steps_per_epoch)
    warmup = cfg.schedule.warmup_epochs * steps_per_epoch
    milestones = [m * steps_per_epoch for m in cfg.schedule.lr_steps]

    def shape(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule.lr_schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if cfg.schedule.lr_schedule == "step":
            return 0.1 ** sum(step >= m for m in milestones)
        return 1.0

    def factor(step: int) -> float:
        return shape(step) * lr_scale

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
    accum_steps: int = 1,
) -> EpochStats:
    """One epoch of plain PyTorch training: the same code under Ray Train and in `bench train --vs-plain`.

    Args:
        step_module: `TrainStep` (possibly DDP-wrapped): `(clips, labels) -> {"loss", ...}`.
        loader: yields `collate_clips` batches (uint8 clips; bad samples listed, not raised).
        optimizer, scheduler: stepped once per optimiser step (every `accum_steps` batches).
        device: where the clips go; normalisation happens there.
        mean, std: (1, 1, C, 1, 1) normalisation tensors on `device`.
        grad_clip: max gradient norm (0 disables).
        use_amp: bf16 autocast.
        on_step_end: the method's `on_step_end` hook (e.g. an EMA update), or None.
        channels_last: clips in channels-last memory order (faster convolutions on GPUs).
        on_bad: called with each batch's list of bad (video_id, reason) as it arrives, or None.
        log: `log(step, num_steps, stats_so_far)` about four times an epoch, or None.
        accum_steps: batches per optimiser step. Their gradients add up, each loss divided by the number
            of batches in its group, so a step sees their mean: an elastic run on fewer workers keeps the
            recipe's global batch (`train.elastic`). DDP syncs gradients on a group's last batch only.
    """
    step_module.train()
    num_steps = len(loader)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)  # summed on the device: no sync per step
    seen, bad, extras = 0, [], {}
    data_time = step_time = 0.0
    start = tick = time.perf_counter()

    def so_far(now: float) -> EpochStats:
        return EpochStats(float(loss_sum) / max(1, seen), seen, bad, extras, data_time, step_time, now - start)

    pending = 0  # batches whose gradients wait for the optimiser step

    def optimiser_step() -> None:
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(step_module.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        if on_step_end is not None:
            on_step_end()

    for i, batch in enumerate(loader):
        group_start = i - i % accum_steps
        group_end = min(num_steps, group_start + accum_steps)
        bad.extend(batch["bad"])
        if batch["bad"] and on_bad is not None:
            on_bad(batch["bad"])
        if len(batch["label"]) == 0:
            if i + 1 == group_end and pending:
                optimiser_step()
                pending = 0
            tick = time.perf_counter()
            continue
        clips = batch["clip"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        t_data = time.perf_counter()
        data_time += t_data - tick
        x = normalise(clips, mean, std)  # (B, T, C, H, W) float
        if channels_last:
            x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(x.shape)  # (B, T, C, H, W)
        if pending == 0:
            optimizer.zero_grad(set_to_none=True)
        last = i + 1 == group_end
        no_sync = getattr(step_module, "no_sync", None)  # DDP: no gradient all-reduce before the group's end
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = step_module(x, labels)
            loss = out["loss"]
            (loss / (group_end - group_start) if group_end - group_start > 1 else loss).backward()
        pending += 1
        if last:
            optimiser_step()
            pending = 0
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


def validate(method, loader, *, device: torch.device, mean, std, num_classes: int,
             fusion: str = "logits") -> dict[str, EvalResult]:
    """Scores each of the method's `eval_variants()` (the primary first) on `loader`; counts are
    summed over DDP ranks, so every rank holds the same result."""
    return {
        name: all_reduce_result(
            evaluate(model, loader, device=device, mean=mean, std=std, num_classes=num_classes, fusion=fusion), device
        )
        for name, model in method.eval_variants().items()
    }
