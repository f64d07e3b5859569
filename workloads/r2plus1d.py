"""R(2+1)D: a 3D ResNet whose 3x3 convs are factorised into 1x3x3 spatial + 3x1x1 temporal.

Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action Recognition", CVPR 2018, in the
form of Chen, Panda et al., CVPR 2021 (IBM action-recognition-pytorch `s3d_resnet`): ImageNet 3x3
weights go to the 1x3x3 conv, the new 3x1x1 conv is Kaiming-initialised, the stem stays 3x7x7.
``mid_width="ibm"`` keeps `planes` channels between the two (R50: 28.13 M, 39.5 GMACs at 8x224^2
without temporal strides); ``"tran"`` uses Tran's parameter-matched width (random init only).
"""

from __future__ import annotations

from dataclasses import dataclass

from .layers.head3d import build_video_net3d
from .layers.ibm_checkpoints import ibm_3d_filter
from .layers.inflate import InflateScale
from .layers.resnet3d import MidWidth, ResNet3d
from .registry import register_workload


@dataclass(frozen=True)
class R2Plus1DParams:
    depth: int = 50  # 18 / 34 / 50 / 101 / 152
    dropout: float = 0.5
    without_t_stride: bool = False  # False = temporal stride 2 in layer2/3/4 (T' = ceil(T/8))
    mid_width: MidWidth = "ibm"  # "ibm": planes | "tran": floor(27*Cin*Cout / (9*Cin + 3*Cout))
    pretrained: str = ""  # timm tag ("resnet50.tv_in1k") or local file; needs mid_width="ibm"
    inflate_scale: InflateScale = "repeat"  # "repeat" (IBM) | "mean"; only the 3x7x7 stem has kT > 1
    width_mult: float = 1.0  # trunk width factor; only 1.0 takes ImageNet weights


@register_workload(
    "r2plus1d", params=R2Plus1DParams, sampling="clip", tiny={"depth": 18, "width_mult": 0.125}
)
def build_r2plus1d(p: R2Plus1DParams, *, num_classes: int, num_frames: int):
    backbone = ResNet3d(
        depth=p.depth,
        kind="2plus1d",
        mid=p.mid_width,
        t_strides=not p.without_t_stride,
        base_width=round(64 * p.width_mult),
    )
    return build_video_net3d(
        backbone,
        num_classes=num_classes,
        dropout=p.dropout,
        pretrained=p.pretrained,
        inflate_scale=p.inflate_scale,
    )


# The official checkpoints (`actionlab weights import r2plus1d ...`): IBM's names, see ibm_3d_filter.
checkpoint_filter_fn = ibm_3d_filter("R(2+1)D (IBM s3d_resnet)")
