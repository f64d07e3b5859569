"""The method contract: a module plus the hooks the training loop calls, each a documented no-op.

A method whose training differs from "cross-entropy on the logits of `forward`" subclasses `Method`
and overrides only the hooks it needs (Lightning's way): its own loss (`training_step`), schedules
that live in the method (`on_epoch_start`), updates after the optimiser step (`on_step_end`),
per-group learning rates (`param_groups`), what validation measured (`eval_stats`) and extra models
to validate (`eval_variants`). The loop calls every hook on every method; a plain `nn.Module` is
adapted once by `as_method`.
"""

from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    """Base class of a trainable video classifier: `forward(clips) -> logits` plus no-op hooks.

    Contract: `forward` takes float (B, T, C, H, W) clips, normalised, and returns logits (B, K).
    """

    def training_step(self, clips: torch.Tensor, labels: torch.Tensor) -> dict:
        """One training forward.

        Returns a dict with "logits" (B, K) and, for a method that owns its loss (mixing, gating,
        restoration), "loss" (a scalar). Without "loss" the loop applies cross-entropy to "logits"
        (with `optim.label_smoothing`). Any other scalar entries are logged as `train/<key>`.
        """
        return {"logits": self(clips)}  # (B, K)

    def on_epoch_start(self, epoch: int, num_epochs: int, *, steps_per_epoch: int = 0, start_step: int = 0) -> None:
        """Before each training epoch (0-based `epoch`), also after a resume: schedules that live in
        the method (temperatures, targets) are recomputed here from the epoch and, for schedules that
        move every step, from the epoch's optimiser steps (`steps_per_epoch`, 0 when unknown) and the
        step it starts at (`start_step`: > 0 when a checkpoint inside the epoch resumes it)."""

    def on_step_end(self) -> None:
        """After each optimiser step (e.g. an EMA update, a second optimiser)."""

    def param_groups(self) -> list[dict]:
        """Optimiser groups: dicts of "params" and optional "lr_scale" / "weight_decay_scale"
        (multipliers of `optim.lr` / `optim.weight_decay`). Parameters that do not require grad are
        left out by the loop."""
        return [{"params": list(self.parameters())}]

    def eval_stats(self) -> dict:
        """Scalars measured over the last validation pass (logged as `val/<key>`), e.g. the compute a
        data-dependent method really spent."""
        return {}

    def eval_variants(self) -> dict[str, nn.Module]:
        """Models to validate, the primary first (logged as `val/top1`). With more than one, each is
        also logged as `val/<name>/top1` (e.g. {"ema": ..., "online": ...})."""
        return {"": self}


class PlainModule(Method):
    """A plain `nn.Module` (no hooks) given `Method`'s defaults. Checkpoints hold the wrapped module's
    own state dict (the loop saves the model it built), so their keys carry no `module.` prefix."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.module(clips)  # (B, K)


def as_method(module: nn.Module) -> Method:
    """`module` itself when it is a `Method`, else `module` inside `PlainModule`."""
    return module if isinstance(module, Method) else PlainModule(module)
