"""Temporal max-pooling inside a frame-folded 2D backbone (TSM's `--temporal_pool`, IBM's `-tp`).

A 3-tap max over time with stride 2 halves the frames that later stages see (and their MACs); it is
also the only place where a TSN backbone lets neighbouring frames interact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import resnet_stages


def pooled_frames(num_frames: int) -> int:
    """Frames left after `TemporalMaxPool` (kernel 3, stride 2, padding 1): ceil(T / 2)."""
    return (num_frames - 1) // 2 + 1


class TemporalMaxPool(nn.Module):
    """(B*T, C, H, W) -> (B*T', C, H, W) with T' = ceil(T / 2); no parameters."""

    def __init__(self, *, num_frames: int):
        super().__init__()
        self.num_frames = num_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nt, c, h, w = x.shape
        t = self.num_frames
        x = x.view(nt // t, t, c, h, w).transpose(1, 2)  # (B, C, T, H, W)
        x = F.max_pool3d(x, kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))  # (B, C, T', H, W)
        return x.transpose(1, 2).reshape(-1, c, h, w)  # (B*T', C, H, W)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}"


def insert_temporal_pool(backbone: nn.Module, *, num_frames: int) -> int:
    """Appends a `TemporalMaxPool` to `layer1` of a timm ResNet (= before `layer2`, as in TSM).

    Appending keeps every parameter name unchanged, so weights load the same with or without it.
    Insert other temporal layers first: they need to know the frames per stage.

    Returns:
        The number of frames that `layer2..layer4` and the head see.
    """
    layer1 = resnet_stages(backbone)[0]
    layer1.append(TemporalMaxPool(num_frames=num_frames))
    return pooled_frames(num_frames)


def ibm_stage_frames(num_frames: int, *, t_stride: bool) -> list[int]:
    """Frames seen by layer1..layer4 of an IBM `action-recognition-pytorch` ResNet: with its default
    temporal stride (`without_t_stride` False) time is max-pooled by 2 after layer1, layer2 and layer3."""
    frames = [num_frames]
    for _ in range(3):
        frames.append(pooled_frames(frames[-1]) if t_stride else frames[-1])
    return frames


def insert_ibm_temporal_pools(backbone: nn.Module, *, num_frames: int) -> int:
    """IBM's `TemporalPooling` (3-tap max, stride 2) appended to layer1, layer2 and layer3 of a ResNet.

    Appending keeps every parameter name unchanged. Insert other temporal layers first (they need
    `ibm_stage_frames`). Returns the frames that layer4 and the head see (ceil(T / 8) for T = 8k).
    """
    frames = ibm_stage_frames(num_frames, t_stride=True)
    for stage, t in zip(resnet_stages(backbone)[:3], frames):
        stage.append(TemporalMaxPool(num_frames=t))
    return frames[-1]
