"""TAM, the temporal aggregation module (Fan, Chen et al., "More Is Less", NeurIPS 2019; as used on
plain ResNets by Chen, Panda et al., CVPR 2021, IBM action-recognition-pytorch).

Per channel, k (default 3) scalar weights applied to frames t-1, t, t+1 (zeros beyond the clip ends),
combined by sum (or max), then ReLU: a depthwise temporal conv of kernel k without bias, plus ReLU.
In ResNets it sits on the residual branch input of every block (the shortcut keeps the plain x),
costing 3*C params and 3*C*H*W MACs per frame and block (R50: +39,360 params, +0.41 % MACs).

Not mmaction2's `tanet` "TAM" (Temporal *Adaptive* Module, Liu et al., ICCV 2021), a different module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import resnet_stages

TamBlend = Literal["sum", "max"]
TamInit = Literal["kaiming", "identity"]
TAM_BLENDS = get_args(TamBlend)
TAM_INITS = get_args(TamInit)


class TemporalAggregation(nn.Module):
    """(B*T, C, H, W) -> (B*T, C, H, W): per-channel weighted sum of neighbouring frames, then ReLU.

    Args:
        channels: C.
        num_frames: T (time is the fast index of the first axis, as everywhere in the 2D kernels).
        blend_frames: k, odd; frame t mixes frames t - k//2 .. t + k//2.
        blend: "sum" (IBM default) or "max" of the k weighted frames.
        depthwise: one weight per channel and offset (IBM default); False mixes all channels
            (IBM's `--no_dw_conv`, k*C*C weights).
        init: "kaiming" (IBM: N(0, 2/C) per weight, a random signed mixture, not identity) or
            "identity" (current frame 1, neighbours 0: starts as the plain 2D network).
    """

    def __init__(
        self,
        channels: int,
        *,
        num_frames: int,
        blend_frames: int = 3,
        blend: str = "sum",
        depthwise: bool = True,
        init: str = "kaiming",
    ):
        super().__init__()
        if blend_frames < 1 or blend_frames % 2 == 0:
            raise ValueError(f"TAM blend_frames must be odd and >= 1, got {blend_frames}")
        if blend not in TAM_BLENDS:
            raise ValueError(f"TAM blend must be one of {TAM_BLENDS}, got {blend!r}")
        if init not in TAM_INITS:
            raise ValueError(f"TAM init must be one of {TAM_INITS}, got {init!r}")
        self.num_frames, self.blend_frames, self.blend = num_frames, blend_frames, blend
        # All k per-offset 1x1 convs in one (grouped) conv: output channel c*k + j is channel c's
        # response for offset j - k//2. A real conv, so MAC counters see TAM's cost.
        self.conv = nn.Conv2d(
            channels, channels * blend_frames, 1, groups=channels if depthwise else 1, bias=False
        )
        with torch.no_grad():
            if init == "kaiming":
                # IBM has k separate C -> C (depthwise) 1x1 convs, each with fan_out = C.
                self.conv.weight.normal_(0.0, math.sqrt(2.0 / channels))
            else:
                self.conv.weight.zero_()
                w = self.conv.weight.view(channels, blend_frames, -1)  # (C, k, C_in per group)
                centre = blend_frames // 2
                if depthwise:
                    w[:, centre, 0] = 1.0
                else:
                    w[:, centre].copy_(torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t, k = self.num_frames, self.blend_frames
        y = self.conv(x).view(nt // t, t, c, k, h, w)  # (B, T, C, k, H, W): weighted copies per offset
        r = k // 2
        y = F.pad(y, (0, 0, 0, 0, 0, 0, 0, 0, r, r))  # (B, T + 2r, C, k, H, W): zeros past the clip ends
        # Frame t takes offset j's copy of frame t + j - r.
        terms = [y[:, j : j + t, :, j] for j in range(k)]  # k x (B, T, C, H, W)
        if self.blend == "sum":
            out = torch.stack(terms).sum(0)
        else:
            out = torch.stack(terms).amax(0)
        return F.relu(out).reshape(nt, c, h, w)  # (B*T, C, H, W)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, blend_frames={self.blend_frames}, blend={self.blend}"


class ResidualTAM(nn.Module):
    """Runs TAM on the input of `net` (a block's conv1), leaving the block's shortcut untouched.

    The wrapped conv stays a child named `net` (state-dict key `conv1.net.weight`, like the TSM
    shift), the module is `tam`.
    """

    def __init__(self, net: nn.Module, tam: TemporalAggregation):
        super().__init__()
        self.tam = tam
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.tam(x))


def _in_channels(block: nn.Module) -> int:
    conv = block.conv1
    return conv.in_channels if isinstance(conv, nn.Conv2d) else conv.net.in_channels


def insert_tam(backbone: nn.Module, *, num_frames: int | Sequence[int], **tam_kwargs) -> nn.Module:
    """Puts a `TemporalAggregation` on the residual branch input of every block of a timm ResNet.

    Call after weights are loaded (it renames `conv1` to `conv1.net`) and before temporal pooling
    is appended to the stages.

    Args:
        backbone: a timm ResNet-family model.
        num_frames: T, or one T per stage when time is pooled inside the backbone.
        **tam_kwargs: `TemporalAggregation` options (blend_frames, blend, depthwise, init).
    """
    stages = resnet_stages(backbone)
    frames = [num_frames] * len(stages) if isinstance(num_frames, int) else list(num_frames)
    if len(frames) != len(stages):
        raise ValueError(f"num_frames: expected one value per stage ({len(stages)}), got {frames}")
    for stage, t in zip(stages, frames):
        for block in stage:
            tam = TemporalAggregation(_in_channels(block), num_frames=t, **tam_kwargs)
            block.conv1 = ResidualTAM(block.conv1, tam)
    return backbone
