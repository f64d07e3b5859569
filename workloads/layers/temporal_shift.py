"""Temporal shift (TSM; Lin, Gan, Han, ICCV 2019, arXiv 1811.08383) and its placement in ResNets.

The shift moves 1/fold_div of the channels one frame back in time and another 1/fold_div one frame
forward, zero-filled at the clip ends: temporal mixing with zero parameters and zero MACs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from .backbones import resnet_stages

ShiftPlace = Literal["blockres", "block"]
SHIFT_PLACES = get_args(ShiftPlace)
# The reference code halves the number of shifted blocks in very deep nets (ResNet-101/152, whose
# layer3 has 23/36 blocks), where shifting every block hurts spatial modelling.
DEEP_STAGE_BLOCKS = 23


def temporal_shift(x: torch.Tensor, *, num_frames: int, fold_div: int = 8) -> torch.Tensor:
    """Shifts channels along time; returns a new tensor, `x` is left untouched.

    Args:
        x: frame-folded activations (B*T, C, ...) with time as the fast index of the first axis.
        num_frames: T.
        fold_div: channels [0, C // fold_div) take frame t+1 (the last frame gets zeros), channels
            [C // fold_div, 2 * C // fold_div) take frame t-1 (the first frame gets zeros), the rest
            stay. A fold_div larger than C shifts nothing (the output equals the input).
    """
    nt, c = x.shape[:2]
    if nt % num_frames:
        raise ValueError(
            f"temporal_shift: leading dim {nt} is not a multiple of num_frames={num_frames}; "
            "frames must be folded as (B*T, C, ...) with the clip length the layer was built for"
        )
    x = x.view(nt // num_frames, num_frames, *x.shape[1:])  # (B, T, C, ...)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # from the future: t <- t+1
    out[:, 1:, fold : 2 * fold] = x[:, :-1, fold : 2 * fold]  # from the past: t <- t-1
    out[:, :, 2 * fold :] = x[:, :, 2 * fold :]
    return out.view(nt, *x.shape[2:])  # (B*T, C, ...)


class TemporalShift(nn.Module):
    """Shifts the input of `net` along time, then calls `net` (zero parameters of its own).

    `net` is kept as the child `net`, so a wrapped `conv1` appears in the state dict as
    `conv1.net.weight` (the same naming as the TSM reference code and mmaction2).
    """

    def __init__(self, net: nn.Module, *, num_frames: int, fold_div: int = 8):
        super().__init__()
        if num_frames < 1 or fold_div < 1:
            raise ValueError(f"TemporalShift: num_frames and fold_div must be >= 1, got {num_frames}, {fold_div}")
        self.net = net
        self.num_frames = num_frames
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(temporal_shift(x, num_frames=self.num_frames, fold_div=self.fold_div))

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, fold_div={self.fold_div}"


def insert_temporal_shift(
    backbone: nn.Module,
    *,
    num_frames: int | Sequence[int],
    fold_div: int = 8,
    place: str = "blockres",
) -> nn.Module:
    """Inserts temporal shifts into a timm ResNet-family backbone, in place; returns it.

    Call it before anything else is appended to the stages (e.g. `insert_temporal_pool`), and
    after pretrained weights are loaded (wrapping renames `conv1` to `conv1.net`).

    Args:
        backbone: a timm ResNet (BasicBlock or Bottleneck blocks in `layer1..layer4`).
        num_frames: T, or one T per stage when time is pooled inside the backbone.
        fold_div: see `temporal_shift`.
        place: "blockres" (paper default) shifts the input of `conv1` in every residual block, so the
            shortcut keeps the unshifted signal; "block" shifts the whole block input, shortcut
            included (the in-place variant the paper found worse). When a stage has >= 23 blocks,
            only every second block of every stage is shifted, as in the reference code.
    """
    if place not in SHIFT_PLACES:
        raise ValueError(f"unknown shift place {place!r}; choose one of {list(SHIFT_PLACES)}")
    stages = resnet_stages(backbone)
    frames = [num_frames] * len(stages) if isinstance(num_frames, int) else list(num_frames)
    if len(frames) != len(stages):
        raise ValueError(f"num_frames: expected one value per stage ({len(stages)}), got {frames}")
    every = 2 if max(len(stage) for stage in stages) >= DEEP_STAGE_BLOCKS else 1
    for stage, t in zip(stages, frames):
        for i, block in enumerate(stage):
            if i % every:
                continue
            if place == "blockres":
                block.conv1 = TemporalShift(block.conv1, num_frames=t, fold_div=fold_div)
            else:
                stage[i] = TemporalShift(block, num_frames=t, fold_div=fold_div)
    return backbone
