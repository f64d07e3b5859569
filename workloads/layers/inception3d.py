"""The Inception-V1 (GoogLeNet) 3D trunk shared by I3D and S3D (IBM `i3d`, `s3d`).

Layout = torchvision's GoogLeNet (whose "5x5" branch is really a 3x3) made 3D, as in IBM
action-recognition-pytorch models/threed_models/{i3d,s3d}.py:
conv1 -> pool1 (1,3,3)/(1,2,2) -> conv2 1x1x1 -> conv3 -> pool2 -> 3a 3b -> pool3 -> 4a..4e -> pool4
-> 5a 5b. All temporal down-sampling sits in pool2/3/4 (stride (2,2,2) when ``t_strides``, else
(1,2,2): T' = ceil(T / 8)); conv1 and pool1 never stride time.
- ``kind="i3d"``: conv1 7x7x7, every 3x3 -> 3x3x3, pools 3x3x3 (pool4 too).
- ``kind="s3d"``: conv1 3x7x7, every 3x3 (conv3 and the inception 3x3 branches) -> separable unit
  1x3x3 (ImageNet) -> BN -> ReLU -> 3x1x1 (new, with bias) -> BN -> ReLU; pool4 has temporal kernel 2
  and no padding (IBM's S3D), so without t-strides the last stage sees T-1 steps; TF-slim S3D-G
  without gating, its temporal pooling moved to the last three stages.
BN eps 1e-3 like GoogLeNet. Parameter names mirror torchvision's GoogLeNet (conv1.conv, conv1.bn,
inception3a.branch2.1.conv, ...), so its ImageNet weights inflate by name; the temporal parts of the
separable units are ``conv_t`` / ``bn_t``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import IMAGENET_MEAN, IMAGENET_STD
from .inflate import InflationReport, inflate_into, load_2d_state_dict

INCEPTION_KINDS = ("i3d", "s3d")
# name: (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5" (a 3x3), pool proj), torchvision GoogLeNet
_BLOCKS = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class BasicConv3d(nn.Module):
    """conv (no bias) -> BN (eps 1e-3) -> ReLU."""

    def __init__(self, c_in, c_out, kernel, *, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm3d(c_out, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class SepConv3d(nn.Module):
    """S3D's separable 3x3: 1x3x3 (ImageNet) -> BN -> ReLU -> 3x1x1 (new) -> BN -> ReLU."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn = nn.BatchNorm3d(c_out, eps=1e-3)
        self.conv_t = nn.Conv3d(c_out, c_out, (3, 1, 1), padding=(1, 0, 0), bias=True)
        self.bn_t = nn.BatchNorm3d(c_out, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        return self.relu(self.bn_t(self.conv_t(x)))


def _conv3x3(kind, c_in, c_out):
    return BasicConv3d(c_in, c_out, 3, padding=1) if kind == "i3d" else SepConv3d(c_in, c_out)


class Inception3d(nn.Module):
    def __init__(self, kind, c_in, ch1, ch3red, ch3, ch5red, ch5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv3d(c_in, ch1, 1)
        self.branch2 = nn.Sequential(BasicConv3d(c_in, ch3red, 1), _conv3x3(kind, ch3red, ch3))
        self.branch3 = nn.Sequential(BasicConv3d(c_in, ch5red, 1), _conv3x3(kind, ch5red, ch5))
        self.branch4 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), BasicConv3d(c_in, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionV1_3d(nn.Module):
    """Inception-V1 3D trunk: (B, 3, T, H, W) -> (B, 1024 * width_mult, T', H/32, W/32)."""

    def __init__(
        self,
        *,
        kind: str = "i3d",
        t_strides: bool = True,
        width_mult: float = 1.0,
        in_chans: int = 3,
        transform_input: bool = True,
    ):
        super().__init__()
        # GoogLeNet's ImageNet weights expect (x - 0.5) / 0.5 inputs; like torchvision's
        # `transform_input`, re-normalise ImageNet-normalised clips so every workload shares one
        # normalisation.
        self.transform_input = transform_input and in_chans == 3
        if kind not in INCEPTION_KINDS:
            raise ValueError(f"Inception-3D kind must be one of {INCEPTION_KINDS}, got {kind!r}")
        self.kind = kind

        def w(c):
            return max(1, int(round(c * width_mult)))

        ts = 2 if t_strides else 1
        k1 = 7 if kind == "i3d" else 3
        self.conv1 = BasicConv3d(in_chans, w(64), (k1, 7, 7), stride=(1, 2, 2), padding=(k1 // 2, 3, 3))
        self.maxpool1 = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.conv2 = BasicConv3d(w(64), w(64), 1)
        self.conv3 = _conv3x3(kind, w(64), w(192))
        self.maxpool2 = nn.MaxPool3d(3, stride=(ts, 2, 2), padding=1)
        self.maxpool3 = nn.MaxPool3d(3, stride=(ts, 2, 2), padding=1)
        if kind == "i3d":
            self.maxpool4 = nn.MaxPool3d(3, stride=(ts, 2, 2), padding=1)
        else:
            # IBM S3D: kernel 2 in every dim, no padding, so without t-strides 5a/5b see T-1 steps.
            self.maxpool4 = nn.MaxPool3d(2, stride=(ts, 2, 2))
        for name, (c_in, *chans) in _BLOCKS.items():
            setattr(self, name, Inception3d(kind, w(c_in), *[w(c) for c in chans]))
        self.num_features = w(1024)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            scale = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1, 1) / 0.5
            shift = (x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1) - 0.5) / 0.5
            x = x * scale + shift  # (B, 3, T, H, W), now normalised with mean 0.5, std 0.5
        x = self.maxpool1(self.conv1(x))  # (B, 64, T, H/4, W/4)
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (B, 192, T/2, H/8, W/8)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # (B, 480, T/4, H/16, W/16)
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            x = getattr(self, name)(x)
        if self.kind == "s3d" and min(x.shape[2:]) < 2:
            # A size-1 axis (tiny clips or crops) cannot take the 2-wide pool: repeat it, which
            # leaves the max unchanged.
            t, h, w = (int(n < 2) for n in x.shape[2:])
            x = F.pad(x, (0, w, 0, h, 0, t), mode="replicate")
        x = self.maxpool4(x)  # (B, 832, T/8 (S3D without t-strides: T-1), H/32, W/32)
        return self.inception5b(self.inception5a(x))  # (B, 1024, T', H/32, W/32)

    def load_2d(self, source: str | dict, *, scale: str = "repeat") -> InflationReport:
        """Inflates torchvision GoogLeNet weights (``"tv:googlenet"``, file, or state dict)."""
        state = load_2d_state_dict(source) if isinstance(source, str) else source
        return inflate_into(
            self, state, scale=scale, is_new=lambda k: "_t." in k, skip=("fc.", "aux1.", "aux2.")
        )
