"""The TSN-style video classifier: a 2D backbone over frames, per-frame dropout + FC, average consensus.

Shared by every frame-folded 2D method (TSN, TSM, TAM, ...). Temporal layers inside the backbone see
(B*T, C, H, W) with time as the fast index; this module owns that folding and its inverse.
"""

from __future__ import annotations

import torch
from torch import nn


class SegmentClassifier(nn.Module):
    """(B, T, C, H, W) -> (B, K): backbone per frame, dropout, one shared FC, mean of logits over time.

    Args:
        backbone: maps (B*T, C, H, W) -> (B*T', D) pooled features; T' = T unless the backbone pools
            time (T must then be a multiple of T', e.g. `TemporalMaxPool`).
        num_classes: K.
        num_frames: T the backbone's temporal layers were built for; other clip lengths raise.
        dropout: on the features of each frame before the FC (TSM's `--dropout`).
        num_features: D; default `backbone.num_features` (every timm model has it).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        num_frames: int,
        dropout: float = 0.5,
        num_features: int | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_frames = num_frames
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features or backbone.num_features, num_classes)
        # The TSM reference initialises the new classifier with a small normal: starting logits near
        # zero keep the first steps from wrecking the pretrained features.
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        if t != self.num_frames:
            raise ValueError(
                f"expected clips of {self.num_frames} frames (B, T, C, H, W), got shape {tuple(clips.shape)}; "
                "build the workload with num_frames equal to the sampled clip length"
            )
        frames = clips.flatten(0, 1)  # (B*T, C, H, W): time is the fast index
        feats = self.backbone(frames)  # (B*T', D)
        logits = self.fc(self.dropout(feats))  # (B*T', K): one shared FC per frame
        return logits.view(b, -1, logits.shape[-1]).mean(1)  # (B, K): average consensus
