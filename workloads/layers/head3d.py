"""The head every IBM 3D model shares, and the wrapper that gives 3D trunks the clip contract.

Head (Chen et al., CVPR'21, IBM action-recognition-pytorch): average-pool space but keep the T'
remaining time steps, dropout, one FC shared by all time steps, then the mean of the T' logit vectors
(TSN's average consensus, no softmax before averaging). At eval time this equals a global
spatio-temporal pool followed by the FC; in training the dropout masks differ per time step.
"""

from __future__ import annotations

import torch
from torch import nn

from .inflate import INFLATE_SCALES


class ClipHead(nn.Module):
    """Per-time-step classifier with average consensus over time."""

    def __init__(self, in_features: int, *, num_classes: int, dropout: float = 0.5, init_std: float = 0.001):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, init_std)  # IBM's 3D heads: N(0, 0.001), zero bias
        nn.init.zeros_(self.fc.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        feats = feats.mean(dim=(3, 4)).transpose(1, 2)  # (B, C, T', H, W) -> (B, T', C): spatial pool
        logits = self.fc(self.dropout(feats))  # (B, T', K): one FC shared over time steps
        return logits.mean(1)  # (B, K): average consensus over time


class VideoNet3d(nn.Module):
    """A 3D trunk plus `ClipHead`; takes the platform's (B, T, C, H, W) clips."""

    def __init__(self, backbone: nn.Module, *, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.head = ClipHead(backbone.num_features, num_classes=num_classes, dropout=dropout)

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.permute(0, 2, 1, 3, 4)  # (B, T, C, H, W) -> (B, C, T, H, W) for Conv3d
        return self.backbone(x)  # (B, D, T', H', W')

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(clips))  # (B, K)


def build_video_net3d(
    backbone: nn.Module,
    *,
    num_classes: int,
    dropout: float,
    pretrained: str = "",
    inflate_scale: str = "repeat",
) -> VideoNet3d:
    """Wraps a 3D trunk with the clip head and, when `pretrained` names 2D weights, inflates them.

    The inflation report (which keys were inflated, copied, newly initialised, skipped) is kept on
    the model as ``pretrained_report`` so the training loop can log it.
    """
    if inflate_scale not in INFLATE_SCALES:
        raise ValueError(f"inflate_scale must be one of {INFLATE_SCALES}, got {inflate_scale!r}")
    model = VideoNet3d(backbone, num_classes=num_classes, dropout=dropout)
    model.pretrained_report = backbone.load_2d(pretrained, scale=inflate_scale) if pretrained else None
    return model
