"""TAM: TSN with the temporal aggregation module (Fan, Chen et al., NeurIPS 2019, arXiv 1912.00869).

In the form of Chen, Panda et al., CVPR 2021 (IBM action-recognition-pytorch, `resnet` +
`--temporal_module_name TAM`): a per-channel 3-tap temporal conv + ReLU on the residual branch input
of every ResNet block, for 0.4 % more MACs than TSN (R50: 24.37 M, 32.8 GMACs at 8x224^2 without
temporal pooling). IBM's default also max-pools time by 2 after layer1, layer2 and layer3 (T' = T/8).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from .layers import SegmentClassifier, create_backbone_2d, ibm_stage_frames, insert_ibm_temporal_pools
from .layers.checkpoint import CheckpointFilter
from .layers.ibm_checkpoints import RESNET_CLASSIFIER_RULES, RESNET_HINTS
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


# IBM action-recognition-pytorch's TAM checkpoints: k separate per-offset 1x1 convs per block
# (`tam.prev_se`, `curr_se`, `next_se`, or `tam.blending_layers.j`), which `_fuse_tam_convs` makes our one
# grouped conv; each is first renamed to `...conv1.tam.conv.weight#j` (j: its offset index).
_TAM_PARTS = {"prev_se": 0, "curr_se": 1, "next_se": 2}


def _fuse_tam_convs(state: dict, model: nn.Module) -> dict:
    """IBM's k per-offset convs -> our one grouped conv whose output channel c*k + j is channel c's
    response for offset j - k//2."""
    out, parts = {}, {}
    for key, value in state.items():
        m = re.fullmatch(r"(.+\.conv1\.tam\.conv\.weight)#(\d+)", key)
        if m:
            parts.setdefault(m.group(1), {})[int(m.group(2))] = value
        else:
            out[key] = value
    for key, by_offset in parts.items():
        k = len(by_offset)
        ws = [by_offset[j] for j in range(k)]  # each (C, C_in per group, 1, 1)
        out[key] = torch.stack(ws, 1).flatten(0, 1)  # (C, k, C_in/g, 1, 1) -> (C*k, C_in/g, 1, 1)
    return out


checkpoint_filter_fn = CheckpointFilter(
    paper="TAM (IBM action-recognition-pytorch, CVPR 2021)",
    rules=(
        *RESNET_CLASSIFIER_RULES,
        *((rf"(layer\d\.\d+)\.tam\.{name}\.fc1\.weight", rf"backbone.\1.conv1.tam.conv.weight#{j}")
          for name, j in _TAM_PARTS.items()),
        (r"(layer\d\.\d+)\.tam\.blending_layers\.(\d+)\.fc1\.weight", r"backbone.\1.conv1.tam.conv.weight#\2"),
        (r"(layer\d\.\d+)\.conv1\.weight", r"backbone.\1.conv1.net.weight"),
        (r"((?:conv1|bn1|layer\d)\..+)", r"backbone.\1"),
    ),
    hints=RESNET_HINTS,
    prepare=_fuse_tam_convs,
    signature=(r"\.tam\.(prev_se|blending_layers)",),
)
