"""I3D: 2D ImageNet networks inflated to 3D (Carreira & Zisserman, CVPR 2017), IBM's variants.

As in Chen, Panda et al., CVPR 2021 (IBM action-recognition-pytorch): ``backbone="resnet"`` is IBM's
`i3d_resnet` (every 3x3 -> 3x3x3, the tables' "I3D-R50": 46.98 M, 64.2 GMACs at 8x224^2 without
temporal strides; the same network as `r3d`), ``backbone="inception_v1"`` is IBM's `i3d` (GoogLeNet
with 7x7x7 stem, all temporal striding in the pools). Inflation tiles each 2D kernel kT times:
``inflate_scale="repeat"`` is IBM's convention (no rescaling), ``"mean"`` divides by kT like mmaction2
and PySlowFast, so a static clip reproduces the 2D network's activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .layers.head3d import build_video_net3d
from .layers.ibm_checkpoints import ibm_3d_filter
from .layers.inception3d import InceptionV1_3d
from .layers.inflate import InflateScale
from .layers.resnet3d import ResNet3d
from .registry import register_workload

@dataclass(frozen=True)
class I3DParams:
    backbone: Literal["resnet", "inception_v1"] = "resnet"  # "resnet" (I3D-ResNet) | "inception_v1" (the original I3D layout)
    depth: int = 50  # ResNet depth 18 / 34 / 50 / 101 / 152 (unused by inception_v1)
    dropout: float = 0.5
    # IBM's flag: False = temporal stride 2 three times (T' = ceil(T/8)); the released 32-frame
    # models were trained with True.
    without_t_stride: bool = False
    # "" = random init; timm tag ("resnet50.tv_in1k"), "tv:googlenet" (torchvision) or a local file.
    pretrained: str = ""
    inflate_scale: InflateScale = "repeat"  # "repeat" (IBM: tile, no 1/kT) | "mean" (mmaction2: divide by kT)
    width_mult: float = 1.0  # trunk width factor; only 1.0 takes ImageNet weights


@register_workload("i3d", params=I3DParams, sampling="clip", tiny={"depth": 18, "width_mult": 0.125})
def build_i3d(p: I3DParams, *, num_classes: int, num_frames: int):
    if p.backbone == "resnet":
        backbone = ResNet3d(
            depth=p.depth, kind="3d", t_strides=not p.without_t_stride, base_width=round(64 * p.width_mult)
        )
    else:  # inception_v1
        backbone = InceptionV1_3d(kind="i3d", t_strides=not p.without_t_stride, width_mult=p.width_mult)
    return build_video_net3d(
        backbone,
        num_classes=num_classes,
        dropout=p.dropout,
        pretrained=p.pretrained,
        inflate_scale=p.inflate_scale,
    )


# The official checkpoints (`actionlab weights import i3d ...`): IBM's names, see ibm_3d_filter.
checkpoint_filter_fn = ibm_3d_filter("I3D (IBM action-recognition-pytorch)")
