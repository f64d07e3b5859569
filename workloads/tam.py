"""TAM: TSN with the temporal aggregation module (Fan, Chen et al., NeurIPS 2019, arXiv 1912.00869).

In the form of Chen, Panda et al., CVPR 2021 (IBM action-recognition-pytorch, `resnet` +
`--temporal_module_name TAM`): a per-channel 3-tap temporal conv + ReLU on the residual branch input
of every ResNet block, for 0.4 % more MACs than TSN (R50: 24.37 M, 32.8 GMACs at 8x224^2 without
temporal pooling). IBM's default also max-pools time by 2 after layer1, layer2 and layer3 (T' = T/8).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from .layers import SegmentClassifier, create_backbone_2d, ibm_stage_frames, insert_ibm_temporal_pools
from .layers.pretrained import TIMM
from .layers.tam import TamBlend, TamInit, insert_tam
from .registry import register_workload


@dataclass(frozen=True)
class TAMParams:
    depth: int = 50  # ResNet 18 / 34 / 50 / 101 / 152
    dropout: float = 0.5
    # IBM's flag: False = 3-tap temporal max-pool, stride 2, after layer1/2/3 (T' = ceil(T/8));
    # the released 32-frame models were trained with True.
    without_t_stride: bool = False
    # "" = random init; a timm tag of the same depth ("resnet50.tv_in1k": IBM's torchvision weights;
    # "timm": timm's default one) or a local state-dict file (.safetensors / .pth), checked key by key.
    pretrained: str = ""
    blend_frames: int = 3  # odd; frames t - k//2 .. t + k//2 are aggregated
    blend: TamBlend = "sum"  # "sum" (IBM default) | "max"
    depthwise: bool = True  # False = IBM's dense "allc" variant (k*C*C weights per block)
    tam_init: TamInit = "kaiming"  # "kaiming" (IBM) | "identity" (starts as TSN)


def _resnet_2d(depth: int, pretrained: str) -> nn.Module:
    arch = f"resnet{depth}"
    if not pretrained:
        return create_backbone_2d(arch)  # residual branches start open (IBM's torchvision init)
    is_file = os.path.isfile(pretrained) or os.sep in pretrained
    if is_file or pretrained.endswith((".pth", ".pt", ".bin", ".safetensors")):
        return create_backbone_2d(arch, pretrained=pretrained)
    if pretrained == TIMM:
        return create_backbone_2d(arch, pretrained=TIMM)
    if pretrained.split(".")[0] != arch:
        raise ValueError(
            f"tam: pretrained tag {pretrained!r} is not a {arch}; use e.g. '{arch}.tv_in1k' or change depth"
        )
    return create_backbone_2d(pretrained, pretrained=TIMM)


@register_workload("tam", params=TAMParams, sampling="segments", tiny={"depth": 18})
def build_tam(p: TAMParams, *, num_classes: int, num_frames: int) -> nn.Module:
    backbone = _resnet_2d(p.depth, p.pretrained)  # weights load before TAM renames conv1
    frames = ibm_stage_frames(num_frames, t_stride=not p.without_t_stride)  # seen by layer1..layer4
    insert_tam(
        backbone,
        num_frames=frames,
        blend_frames=p.blend_frames,
        blend=p.blend,
        depthwise=p.depthwise,
        init=p.tam_init,
    )
    if not p.without_t_stride:
        insert_ibm_temporal_pools(backbone, num_frames=num_frames)
    return SegmentClassifier(backbone, num_classes=num_classes, num_frames=num_frames, dropout=p.dropout)
