"""S3D: separable 3D convs, every 3x3 -> 1x3x3 spatial + 3x1x1 temporal (Xie et al., ECCV 2018).

IBM's form (Chen, Panda et al., CVPR 2021, action-recognition-pytorch): ``backbone="inception_v1"``
is IBM's `s3d` (GoogLeNet, 3x7x7 stem, TF-slim S3D-G without gating, temporal pooling in the last
three pools: 8.31 M, 19.8 GMACs at 8x224^2 without temporal strides); ``backbone="resnet"`` is IBM's
`s3d_resnet`, the paper's R(2+1)D (the same network as `r2plus1d` with the IBM width). The 1x3x3
convs take the ImageNet 3x3 kernels, the 3x1x1 ones start from Kaiming init.
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
class S3DParams:
    backbone: Literal["inception_v1", "resnet"] = "inception_v1"  # "inception_v1" (S3D) | "resnet" (IBM `s3d_resnet` = R(2+1)D)
    depth: int = 50  # ResNet depth 18 / 34 / 50 / 101 / 152 (unused by inception_v1)
    dropout: float = 0.5
    without_t_stride: bool = False  # False = temporal stride 2 in three pools / stages
    # "" = random init; "tv:googlenet" (torchvision), a timm ResNet tag, or a local file.
    pretrained: str = ""
    inflate_scale: InflateScale = "repeat"  # "repeat" (IBM) | "mean"; only the 3x7x7 stem has kT > 1
    width_mult: float = 1.0  # trunk width factor; only 1.0 takes ImageNet weights


@register_workload("s3d", params=S3DParams, sampling="clip", tiny={"width_mult": 0.125, "depth": 18})
def build_s3d(p: S3DParams, *, num_classes: int, num_frames: int):
    if p.backbone == "inception_v1":
        backbone = InceptionV1_3d(kind="s3d", t_strides=not p.without_t_stride, width_mult=p.width_mult)
    else:  # resnet
        backbone = ResNet3d(
            depth=p.depth,
            kind="2plus1d",
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


# The official checkpoints (`actionlab weights import s3d ...`): IBM's names, see ibm_3d_filter.
checkpoint_filter_fn = ibm_3d_filter("S3D (IBM action-recognition-pytorch)")
