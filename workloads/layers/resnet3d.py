"""The 3D ResNet trunk shared by I3D-ResNet / ResNet3D and R(2+1)D (IBM `i3d_resnet`, `s3d_resnet`).

Layout (IBM action-recognition-pytorch, models/threed_models): a torchvision ResNet ("v1.5", stride in
the 3x3) made 3D.
- Stem: conv 3x7x7, stride (1,2,2) -> BN -> ReLU -> max-pool (1,3,3) stride (1,2,2). Time is never
  strided here.
- ``conv="3d"`` (I3D-ResNet / ResNet3D): every 3x3 becomes 3x3x3 (not only selected blocks as in
  mmaction2's I3D), 1x1 stay 1x1x1.
- ``conv="2plus1d"`` (R(2+1)D): every 3x3 becomes 1x3x3 (spatial, from ImageNet) -> BN -> ReLU ->
  3x1x1 (temporal, new) -> BN. ``mid="ibm"`` keeps planes channels in between (IBM, lighter);
  ``mid="tran"`` uses Tran et al.'s parameter-matched width
  M = floor(kT*kH*kW*Cin*Cout / (kH*kW*Cin + kT*Cout)), which cannot take ImageNet weights.
- ``t_strides=True`` (IBM default, i.e. *without* ``--without_t_stride``): temporal stride 2 in the
  first block of layer2/3/4, on the 3x3x3 conv (3d) or the 3x1x1 conv (2plus1d) and on the shortcut:
  T' = ceil(T / 8).
Parameter names mirror torchvision/timm ResNets (conv1, bn1, layerN.i.convK, downsample.0/1), so
ImageNet weights inflate by name; the extra temporal pieces are ``convK_t`` / ``bnK_t``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from .inflate import InflationReport, inflate_into, load_2d_state_dict

CONV_KINDS = ("3d", "2plus1d")
MidWidth = Literal["ibm", "tran"]
MID_WIDTHS = get_args(MidWidth)
# depth -> (block type, blocks per stage)
RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def tran_mid_channels(c_in: int, c_out: int, k_t: int = 3, k_s: int = 3) -> int:
    """Tran et al.'s (2+1)D width: the factorised pair has the full 3D conv's parameter count."""
    return (k_t * k_s * k_s * c_in * c_out) // (k_s * k_s * c_in + k_t * c_out)


class _Block(nn.Module):
    """What both blocks share: a ResNet 3x3 conv made 3D, under flat ImageNet-matching names."""

    def __init__(self, kind: str, mid: str):
        super().__init__()
        self.kind, self.mid = kind, mid
        self.relu = nn.ReLU(inplace=True)

    def _add_3x3(self, idx: int, c_in: int, c_out: int, *, stride: int, t_stride: int) -> None:
        """Registers conv{idx} + bn{idx} (and conv{idx}_t + bn{idx}_t for (2+1)D)."""
        if self.kind == "3d":
            conv = nn.Conv3d(c_in, c_out, 3, stride=(t_stride, stride, stride), padding=1, bias=False)
            setattr(self, f"conv{idx}", conv)
            setattr(self, f"bn{idx}", nn.BatchNorm3d(c_out))
            return
        m = c_out if self.mid == "ibm" else tran_mid_channels(c_in, c_out)
        conv = nn.Conv3d(c_in, m, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False)
        conv_t = nn.Conv3d(m, c_out, (3, 1, 1), stride=(t_stride, 1, 1), padding=(1, 0, 0), bias=False)
        setattr(self, f"conv{idx}", conv)
        setattr(self, f"bn{idx}", nn.BatchNorm3d(m))
        setattr(self, f"conv{idx}_t", conv_t)
        setattr(self, f"bn{idx}_t", nn.BatchNorm3d(c_out))

    def _3x3(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, f"bn{idx}")(getattr(self, f"conv{idx}")(x))
        if self.kind == "2plus1d":
            x = self.relu(x)  # (2+1)D: BN-ReLU between the spatial and the temporal conv
            x = getattr(self, f"bn{idx}_t")(getattr(self, f"conv{idx}_t")(x))
        return x


class BasicBlock3d(_Block):
    expansion = 1

    def __init__(self, inplanes, planes, *, stride=1, t_stride=1, kind="3d", mid="ibm", downsample=None):
        super().__init__(kind, mid)
        self._add_3x3(1, inplanes, planes, stride=stride, t_stride=t_stride)
        self._add_3x3(2, planes, planes, stride=1, t_stride=1)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self._3x3(2, self.relu(self._3x3(1, x)))
        return self.relu(out + shortcut)


class Bottleneck3d(_Block):
    expansion = 4

    def __init__(self, inplanes, planes, *, stride=1, t_stride=1, kind="3d", mid="ibm", downsample=None):
        super().__init__(kind, mid)
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self._add_3x3(2, planes, planes, stride=stride, t_stride=t_stride)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self._3x3(2, out))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet3d(nn.Module):
    """3D ResNet trunk: (B, 3, T, H, W) -> (B, num_features, T', H/32, W/32).

    `base_width` is layer1's width (64 in ResNets; stages double it); `stem_width` defaults to it
    (timm's narrow ResNets keep a 64-wide stem).
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        kind: str = "3d",
        mid: str = "ibm",
        t_strides: bool = True,
        base_width: int = 64,
        stem_width: int | None = None,
        in_chans: int = 3,
    ):
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_DEPTHS)}, got {depth}")
        if kind not in CONV_KINDS:
            raise ValueError(f"conv kind must be one of {CONV_KINDS}, got {kind!r}")
        if mid not in MID_WIDTHS:
            raise ValueError(f"(2+1)D mid width must be one of {MID_WIDTHS}, got {mid!r}")
        block_type, counts = RESNET_DEPTHS[depth]
        block = BasicBlock3d if block_type == "basic" else Bottleneck3d
        self.depth, self.kind, self.mid = depth, kind, mid
        stem_width = stem_width or base_width
        self.conv1 = nn.Conv3d(
            in_chans, stem_width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False
        )
        self.bn1 = nn.BatchNorm3d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        inplanes = stem_width
        for i, n in enumerate(counts):
            planes = base_width * 2**i
            stride = 1 if i == 0 else 2
            t_stride = 2 if (i > 0 and t_strides) else 1
            out = planes * block.expansion
            downsample = None
            if stride != 1 or t_stride != 1 or inplanes != out:
                downsample = nn.Sequential(
                    nn.Conv3d(inplanes, out, 1, stride=(t_stride, stride, stride), bias=False),
                    nn.BatchNorm3d(out),
                )
            first = block(
                inplanes, planes, stride=stride, t_stride=t_stride, kind=kind, mid=mid, downsample=downsample
            )
            inplanes = out
            blocks = [first]
            blocks += [block(inplanes, planes, kind=kind, mid=mid) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                # IBM initialises every conv (the new temporal ones included) Kaiming fan_out.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, T, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, D, T', H/32, W/32)
        return x

    def load_2d(self, source: str | dict, *, scale: str = "repeat") -> InflationReport:
        """Inflates ImageNet ResNet weights (timm tag, file, or a state dict) into this trunk."""
        if self.kind == "2plus1d" and self.mid != "ibm":
            raise ValueError(
                "ImageNet weights fit R(2+1)D only with the IBM width (mid='ibm'); Tran's "
                "parameter-matched width changes the spatial conv shapes. Use pretrained='' or mid='ibm'."
            )
        state = load_2d_state_dict(source) if isinstance(source, str) else source
        return inflate_into(self, state, scale=scale, is_new=lambda k: "_t." in k)
