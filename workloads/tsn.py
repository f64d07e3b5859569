"""TSN: Temporal Segment Networks (Wang et al., ECCV 2016, arXiv 1608.00859).

One frame per segment through a 2D ImageNet CNN, per-frame dropout + FC, and the mean of the frame
logits: no temporal interaction, so the prediction cannot depend on frame order (the 2D baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .layers import SegmentClassifier, create_backbone_2d, insert_ibm_temporal_pools, insert_temporal_pool
from .layers.checkpoint import CheckpointFilter
from .layers.ibm_checkpoints import RESNET_CLASSIFIER_RULES, RESNET_HINTS
from .registry import register_workload


@dataclass(frozen=True)
class TSNParams:
    """Defaults follow the ResNet-50 TSN of the TSM and IBM reference code (not BN-Inception).

    To reproduce the papers' ImageNet start, set `backbone: resnet50.tv_in1k` and `pretrained: timm`;
    the default never reaches the network.
    """

    backbone: str = "resnet50"  # timm name, optionally with a pretrained tag
    pretrained: str = ""  # "timm": timm's weights for `backbone`; or a local .safetensors / .pth state dict
    dropout: float = 0.5
    temporal_pool: bool = False  # max-pool time by 2 after layer1 (TSM's --temporal_pool; ResNets only)
    # IBM's flag (`action-recognition-pytorch`): False = its default temporal stride, a 3-tap max-pool
    # over time with stride 2 after layer1, layer2 and layer3 (T' = ceil(T/8)); ResNets only.
    without_t_stride: bool = True


@register_workload("tsn", params=TSNParams, sampling="segments", tiny={"backbone": "resnet18"})
def build_tsn(params: TSNParams, *, num_classes: int, num_frames: int) -> nn.Module:
    backbone = create_backbone_2d(params.backbone, pretrained=params.pretrained)
    if params.temporal_pool and not params.without_t_stride:
        raise ValueError(
            "tsn: temporal_pool (TSM's pool after layer1) and without_t_stride=false (IBM's pools after "
            "layer1-3) are two pooling schemes; set one of them"
        )
    if params.temporal_pool:
        insert_temporal_pool(backbone, num_frames=num_frames)
    if not params.without_t_stride:
        insert_ibm_temporal_pools(backbone, num_frames=num_frames)
    return SegmentClassifier(backbone, num_classes=num_classes, num_frames=num_frames, dropout=params.dropout)


# The official checkpoints of IBM action-recognition-pytorch (bare torchvision ResNet) and MIT TSM's
# TSN (`base_model.*`, its --temporal_pool wrapping layer2 as `layer2.net`).
checkpoint_filter_fn = CheckpointFilter(
    paper="TSN (ECCV 2016; IBM action-recognition-pytorch / MIT TSM repo)",
    rules=(
        *RESNET_CLASSIFIER_RULES,
        (r"(?:base_model\.)?layer2\.net\.(.+)", r"backbone.layer2.\1"),
        (r"(?:base_model\.)?((?:conv1|bn1|layer\d)\..+)", r"backbone.\1"),
    ),
    hints=RESNET_HINTS,
)
