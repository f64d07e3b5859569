"""TSM: Temporal Shift Module (Lin, Gan, Han, ICCV 2019, arXiv 1811.08383).

TSN plus a zero-parameter, zero-MAC shift of 1/8 + 1/8 of the channels to the neighbouring frames at
the input of every residual branch: temporal modelling at exactly TSN's cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .layers import (
    SegmentClassifier,
    create_backbone_2d,
    insert_temporal_pool,
    insert_temporal_shift,
    pooled_frames,
)
from .layers.checkpoint import CheckpointFilter
from .layers.ibm_checkpoints import RESNET_CLASSIFIER_RULES, RESNET_HINTS
from .layers.temporal_shift import ShiftPlace
from .params import bounded
from .registry import register_workload


@dataclass(frozen=True)
class TSMParams:
    """TSN's params (see `TSNParams`) plus the shift; defaults are the paper's."""

    backbone: str = "resnet50"  # timm ResNet family, optionally with a pretrained tag
    pretrained: str = ""  # "timm": timm's weights for `backbone`; or a local .safetensors / .pth state dict
    dropout: float = 0.5
    temporal_pool: bool = False  # max-pool time by 2 after layer1; later stages shift over T/2
    fold_div: int = bounded(8, lo=1)  # 1/fold_div of the channels shift each way
    shift_place: ShiftPlace = "blockres"  # "blockres": residual branch only; "block": whole block input


@register_workload("tsm", params=TSMParams, sampling="segments", tiny={"backbone": "resnet18"})
def build_tsm(params: TSMParams, *, num_classes: int, num_frames: int) -> nn.Module:
    # Weights load before the shift wraps conv1 (which renames it conv1.net), so timm tags and
    # plain ResNet state-dict files apply unchanged.
    backbone = create_backbone_2d(params.backbone, pretrained=params.pretrained)
    later = pooled_frames(num_frames) if params.temporal_pool else num_frames
    insert_temporal_shift(
        backbone,
        num_frames=[num_frames, later, later, later],  # frames seen by layer1..layer4
        fold_div=params.fold_div,
        place=params.shift_place,
    )
    if params.temporal_pool:
        insert_temporal_pool(backbone, num_frames=num_frames)
    return SegmentClassifier(backbone, num_classes=num_classes, num_frames=num_frames, dropout=params.dropout)


# MIT TSM's checkpoints (`ops/models.py`: the ResNet as `base_model`, the shift wrapping each block's conv1).
checkpoint_filter_fn = CheckpointFilter(
    paper="TSM (ICCV 2019)",
    rules=(
        *RESNET_CLASSIFIER_RULES,
        (r"base_model\.layer2\.net\.(.+)", r"backbone.layer2.\1"),  # --temporal_pool
        (r"base_model\.((?:conv1|bn1|layer\d)\..+)", r"backbone.\1"),  # blockres: conv1.net.*; block: N.net.*
    ),
    hints=RESNET_HINTS,
    signature=(r"layer\d\.\d+\.(conv1\.)?net\.",),
)
