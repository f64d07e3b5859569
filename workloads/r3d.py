"""ResNet3D: a 3D ResNet with every 3x3 conv inflated to 3x3x3 (the paper's "ResNet3D" / "I3D-R").

Chen, Panda et al., "Deep Analysis of CNN-based Spatio-temporal Representations for Action
Recognition", CVPR 2021 (IBM action-recognition-pytorch `i3d_resnet`). Unlike mmaction2's and
PySlowFast's I3D-ResNet, which give only selected blocks a 3x1x1 conv, every 3x3 becomes 3x3x3 here
(R50: 46.98 M params, 64.2 GMACs at 8x224^2 without temporal strides). The same network is
`i3d` with ``backbone="resnet"``; this name follows the paper's table.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layers.head3d import build_video_net3d
from .layers.ibm_checkpoints import ibm_3d_filter
from .layers.inflate import InflateScale
from .layers.resnet3d import ResNet3d
from .registry import register_workload


@dataclass(frozen=True)
class R3DParams:
    depth: int = 50  # 18 / 34 / 50 / 101 / 152
    dropout: float = 0.5
    # IBM's flag: False = temporal stride 2 in layer2/3/4 (T' = ceil(T/8)); the released 32-frame
    # models were trained with True.
    without_t_stride: bool = False
    # "" = random init; a timm tag ("resnet50.tv_in1k", IBM's torchvision weights) or a local file.
    pretrained: str = ""
    inflate_scale: InflateScale = "repeat"  # "repeat" (IBM: tile, no 1/kT) | "mean" (mmaction2: divide by kT)
    width_mult: float = 1.0  # trunk width factor; only 1.0 takes ImageNet weights (CPU tests use less)


@register_workload("r3d", params=R3DParams, sampling="clip", tiny={"depth": 18, "width_mult": 0.125})
def build_r3d(p: R3DParams, *, num_classes: int, num_frames: int):
    backbone = ResNet3d(
        depth=p.depth, kind="3d", t_strides=not p.without_t_stride, base_width=round(64 * p.width_mult)
    )
    return build_video_net3d(
        backbone,
        num_classes=num_classes,
        dropout=p.dropout,
        pretrained=p.pretrained,
        inflate_scale=p.inflate_scale,
    )


# The official checkpoints (`actionlab weights import r3d ...`): IBM's names, see ibm_3d_filter.
checkpoint_filter_fn = ibm_3d_filter("ResNet3D (IBM i3d_resnet)")
