"""H2CN: Hierarchical Hourglass Convolutional Network (Tan et al., ACM MM 2022, DOI 10.1145/3503161.3547841).

Hourglass convolution (HgC): a temporal convolution over [agg(t-1), x(t), agg(t+1)], where agg is a
depthwise 3x3 spatial convolution of the neighbours, so the receptive field widens on the prior and
next frames and large displacements stay in view. It is used twice: at frame level in the stem on
a 5-frame snippet per segment at half resolution (5 -> 3 -> 1 frames, fused 0.5/0.5 with the centre
frame's stem), and at clip level inside every TSM-shifted ResNet-50 bottleneck as a channel excitation
over the segments. Layout and initialisation follow the official `ty-97/H2CN` code.

Input: (B, S*5, C, H, W), the 5 consecutive frames of each of S segments in order (the official
TDN-style snippets, which the platform's `snippets` sampling delivers); `num_frames` = S, the
segments (8 / 16 as in the paper's rows).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .layers.backbones import read_state_dict
from .layers.checkpoint import CheckpointError, CheckpointFilter
from .layers.pretrained import weights_file
from .layers.temporal_shift import temporal_shift
from .registry import register_workload

log = logging.getLogger(__name__)

SNIPPET_FRAMES = 5  # frames per segment: hard-coded in the official stem (x.shape[1] // 5, centre = frame 2)
# Tiny CPU variant for the registry test: 2 segments (x 5 frames) at 32 px.
TINY_CLIP = {"num_frames": 2, "size_px": 32}
STAGE_PLANES = (64, 128, 256, 512)


@dataclass(frozen=True)
class H2CNParams:
    """Defaults: the official H2CN ResNet-50 (`h2cn(num_segments)`, Sth-V1 `train.py`: dropout 0.5).

    `pretrained`: the path of an official H2CN checkpoint (VideoNet: `base_model.*`, `new_fc.*`, optionally
    under `state_dict` and `module.`), or ImageNet ResNet-50 weights in torchvision's layout
    (`resnet50-19c8e357.pth`, what the official code loads), which fill the trunk and seed the
    motion stem's 9-channel 7x7 kernel as officially (their conv1 averaged over RGB).
    """

    depths: tuple = (3, 4, 6, 3)
    width: int = 64  # stem width; stage widths are width x (1, 2, 4, 8), x4 at each bottleneck output
    reduction: int = 16  # channel reduction of the clip-level HgC
    fold_div: int = 8  # TSM shift before each bottleneck's conv1 (blockres)
    appearance_weight: float = 0.5  # stem fusion: a * appearance + b * motion (official apha, belta)
    motion_weight: float = 0.5
    dropout: float = 0.5
    pretrained: str = ""  # a local file (see above); "" = random init


def _resnet_init(conv: nn.Conv2d) -> None:
    """The official ResNet init for every Conv2d of the trunk: normal(0, sqrt(2 / (k*k*out)))."""
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    conv.weight.data.normal_(0, math.sqrt(2.0 / n))


class FrameHourglass(nn.Module):
    """Frame-level HgC (official `fhgc`): groups of n frames -> n - 2 frames (valid, stride-3 triples).

    (N*n, C, h, w) -> (N*(n-2), C*expand, h, w): for every inner frame t, [agg(t-1), x(t), agg(t+1)] is
    reduced by a depthwise (3, 1, 1) convolution with stride 3. `motion_init` starts it as x(t) - agg(t+1).
    """

    def __init__(self, channels: int, *, num_frames: int, expand: int = 1, motion_init: bool = True):
        super().__init__()
        self.num_frames = num_frames
        self.spatial = nn.Conv2d(channels, channels, 3, padding=2, dilation=2, groups=channels, bias=False)
        nn.init.xavier_normal_(self.spatial.weight)
        self.temporal = nn.Conv3d(
            channels, channels * expand, (3, 1, 1), stride=(3, 1, 1), groups=channels, bias=False
        )
        if motion_init:
            with torch.no_grad():
                self.temporal.weight.zero_()
                self.temporal.weight[:, 0, 1] = 1.0  # x(t)
                self.temporal.weight[:, 0, 2] = -1.0  # agg(t+1)
        else:
            nn.init.kaiming_normal_(self.temporal.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.num_frames
        frames = x.view(-1, n, *x.shape[1:])  # (N, n, C, h, w)
        agg = self.spatial(x).view(-1, n, *x.shape[1:])  # (N, n, C, h, w)
        triples = torch.stack([agg[:, :-2], frames[:, 1:-1], agg[:, 2:]], 2)  # (N, n-2, 3, C, h, w)
        triples = triples.flatten(1, 2).transpose(1, 2)  # (N, C, 3*(n-2), h, w): time triples
        out = self.temporal(triples).transpose(1, 2)  # (N, n-2, C*expand, h, w)
        return out.reshape(-1, *out.shape[2:])  # (N*(n-2), C*expand, h, w)


class ClipHourglass(nn.Module):
    """Clip-level HgC (official `chgc`): an excitation over segments from a reduced hourglass response.

    (B*S, C, h, w) -> same shape: x * sigmoid(BN(W3 GAP(HgC_t(BN(W1 x))))), where HgC_t combines the
    depthwise-3x3-aggregated neighbours t-1, t+1 (zeros beyond the clip) with frame t.
    """

    def __init__(self, channels: int, *, num_segments: int, reduction: int):
        super().__init__()
        mid = channels // reduction
        self.num_segments = num_segments
        self.conv1 = nn.Conv2d(channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.convt = nn.Conv3d(mid, mid, (3, 1, 1), stride=(3, 1, 1), groups=mid, bias=False)
        nn.init.xavier_normal_(self.convt.weight)
        self.conv3 = nn.Conv2d(mid, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_segments
        reduced = self.bn1(self.conv1(x))  # (B*S, C/r, h, w)
        agg = self.conv2(reduced)
        shape = reduced.shape[1:]
        reduced, agg = reduced.view(-1, s, *shape), agg.view(-1, s, *shape)  # (B, S, C/r, h, w)
        prev = F.pad(agg[:, :-1], (0, 0, 0, 0, 0, 0, 1, 0))  # agg(t-1), zeros before the first segment
        nxt = F.pad(agg[:, 1:], (0, 0, 0, 0, 0, 0, 0, 1))  # agg(t+1), zeros after the last
        triples = torch.stack([prev, reduced, nxt], 2).flatten(1, 2).transpose(1, 2)  # (B, C/r, 3S, h, w)
        response = self.convt(triples).transpose(1, 2).reshape(-1, *shape)  # (B*S, C/r, h, w)
        gate = torch.sigmoid(self.bn3(self.conv3(response.mean((2, 3), keepdim=True))))  # (B*S, C, 1, 1)
        return x * gate


class Bottleneck(nn.Module):
    """ResNet bottleneck with a TSM shift before conv1 and the clip-level HgC after conv1 (official)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, *, stride: int, num_segments: int, fold_div: int, reduction: int,
        downsample: nn.Module | None,
    ):
        super().__init__()
        self.num_segments = num_segments
        self.fold_div = fold_div
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.chgc = ClipHourglass(planes, num_segments=num_segments, reduction=reduction)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(temporal_shift(x, num_frames=self.num_segments, fold_div=self.fold_div))
        out = self.chgc(self.relu(self.bn1(out)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class H2CN(nn.Module):
    """(B, S*5, C, H, W) -> (B, K): motion stem + appearance stem, H2CN ResNet, dropout + FC, segment mean."""

    def __init__(self, p: H2CNParams, *, num_classes: int, num_segments: int):
        super().__init__()
        self.num_segments = num_segments
        self.appearance_weight, self.motion_weight = p.appearance_weight, p.motion_weight
        w = p.width
        # frame level: 5 frames -> 3 (motion-difference init) -> 1 with 3x channels, at half resolution
        self.fhgc1 = nn.Sequential(FrameHourglass(3, num_frames=5), nn.BatchNorm2d(3), nn.ReLU(inplace=True))
        self.fhgc2 = nn.Sequential(
            FrameHourglass(3, num_frames=3, expand=3, motion_init=False), nn.BatchNorm2d(9), nn.ReLU(inplace=True)
        )
        self.conv_fhgc = nn.Sequential(
            nn.Conv2d(9, w, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=True)  # fbresnet: conv1 with a bias
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        inplanes, stages = w, []
        for i, (planes, depth) in enumerate(zip((w, 2 * w, 4 * w, 8 * w), p.depths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                downsample = None
                if j == 0 and (stride != 1 or inplanes != planes * 4):
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=True), nn.BatchNorm2d(planes * 4)
                    )
                blocks.append(
                    Bottleneck(
                        inplanes, planes, stride=stride if j == 0 else 1, num_segments=num_segments,
                        fold_div=p.fold_div, reduction=p.reduction, downsample=downsample,
                    )
                )
                inplanes = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = inplanes
        self.dropout = nn.Dropout(p.dropout)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in (self.conv1, *[m for s in stages for m in s.modules() if isinstance(m, nn.Conv2d)]):
            _resnet_init(m)
        # The motion stem's kernel: a ResNet-initialised 3-channel conv1 averaged over RGB (as officially).
        seed = torch.empty(w, 3, 7, 7)
        seed.normal_(0, math.sqrt(2.0 / (49 * w)))
        self.conv_fhgc[0].weight.data.copy_(seed.mean(1, keepdim=True).expand(-1, 9, -1, -1))
        nn.init.normal_(self.fc.weight, std=0.001)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, S*5, C, H, W) -> last-stage map (B, D, S, h, w)."""
        b, t = clips.shape[:2]
        if t != self.num_segments * SNIPPET_FRAMES:
            raise ValueError(
                f"h2cn expects {self.num_segments} segments x {SNIPPET_FRAMES} frames = "
                f"{self.num_segments * SNIPPET_FRAMES} frames (B, T, C, H, W), got shape {tuple(clips.shape)}; "
                f"sample it with `snippets` sampling ({SNIPPET_FRAMES} consecutive frames per segment)"
            )
        frames = clips.flatten(0, 1)  # (B*S*5, C, H, W): snippet frames are the fast index
        motion = self.fhgc2(self.fhgc1(F.avg_pool2d(frames, 2)))  # (B*S, 9, H/2, W/2)
        motion = F.max_pool2d(self.conv_fhgc(motion), 3, stride=2, padding=1)  # (B*S, w, H/8, W/8)
        centre = clips.view(b * self.num_segments, SNIPPET_FRAMES, *clips.shape[2:])[:, SNIPPET_FRAMES // 2]
        x = F.max_pool2d(self.relu(self.bn1(self.conv1(centre))), 3, stride=2, padding=1)  # (B*S, w, H/4, W/4)
        x = self.appearance_weight * x + self.motion_weight * F.interpolate(motion, size=x.shape[2:])
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B*S, D, h, w)
        return x.view(b, self.num_segments, *x.shape[1:]).transpose(1, 2)  # (B, D, S, h, w)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(clips)  # (B, D, S, h, w)
        b = feats.shape[0]
        pooled = feats.mean((3, 4)).transpose(1, 2).flatten(0, 1)  # (B*S, D)
        logits = self.fc(self.dropout(pooled))  # (B*S, K)
        return logits.view(b, self.num_segments, -1).mean(1)  # (B, K): average consensus


def load_pretrained(model: H2CN, path: str | Path) -> None:
    """Loads an official H2CN checkpoint, or ImageNet ResNet-50 weights (torchvision layout) into the trunk.

    ImageNet weights: every trunk tensor must be present (the official load is non-strict, which also
    keeps conv1's and the downsample convolutions' biases at their init: fbresnet has biases that the
    file lacks; those are kept here too), `fc.*` is skipped, and the motion stem's kernel becomes the
    file's conv1 averaged over RGB, repeated over its 9 channels.
    """
    state = read_state_dict(path, nested_keys=("state_dict", "model"), prefixes=())
    if any(k.removeprefix("module.").startswith(("base_model.", "new_fc.")) for k in state):
        try:  # an official H2CN checkpoint: its names are mapped by the one filter `weights import` uses
            state = checkpoint_filter_fn({k.removeprefix("module."): v for k, v in state.items()}, model)
        except CheckpointError as err:
            raise CheckpointError(f"weights file {str(path)!r} vs H2CN: {err}") from None
        model.load_state_dict(state)
        return
    own = model.state_dict()
    trunk = {k: v for k, v in state.items() if not k.startswith("fc.")}
    unexpected = sorted(set(trunk) - set(own))
    missing = sorted(
        k for k in own
        if re.match(r"^(conv1|bn1|layer\d)\.", k) and ".chgc." not in k and k not in trunk
        and not (k == "conv1.bias" or re.match(r"^layer\d\.0\.downsample\.0\.bias$", k))
    )
    if unexpected or missing:
        raise ValueError(
            f"weights file {str(path)!r} vs H2CN's ResNet-50 trunk: missing {missing[:10]}; unexpected "
            f"{unexpected[:10]}. Use torchvision-layout ResNet-50 ImageNet weights or an official H2CN checkpoint."
        )
    mismatched = [k for k in trunk if trunk[k].shape != own[k].shape]
    if mismatched:
        raise ValueError(f"weights file {str(path)!r}: shape mismatch for {mismatched[:10]}; use ResNet-50 weights")
    model.load_state_dict(trunk, strict=False)
    with torch.no_grad():
        kernel = trunk["conv1.weight"].mean(1, keepdim=True)  # (w, 1, 7, 7)
        model.conv_fhgc[0].weight.copy_(kernel.expand(-1, model.conv_fhgc[0].in_channels, -1, -1))
    log.info("loaded the ImageNet trunk from %s (%d tensors)", path, len(trunk))


@register_workload(
    "h2cn",
    params=H2CNParams,
    sampling="snippets",
    snippet_frames=SNIPPET_FRAMES,
    tiny_clip=TINY_CLIP,
    tiny={"depths": (1, 1, 1, 1), "width": 16, "reduction": 4},
)
def build_h2cn(p: H2CNParams, *, num_classes: int, num_frames: int) -> nn.Module:
    """`num_frames` = segments S; the model takes S x 5 frames."""
    if num_frames < 1:
        raise ValueError(f"h2cn: num_frames={num_frames} counts segments; give at least 1 (the paper: 8 or 16)")
    model = H2CN(p, num_classes=num_classes, num_segments=num_frames)
    if weights_file(p.pretrained, owner="h2cn"):
        load_pretrained(model, p.pretrained)
    return model


# ty-97/H2CN's checkpoints: a TSN-style VideoNet around `build_h2cn` (`base_model.*`, `new_fc`); its
# unused `conv1_temp` only seeded the motion stem.
checkpoint_filter_fn = CheckpointFilter(
    paper="H2CN (ACM MM 2022)",
    rules=(
        (r"base_model\.conv1_temp\.(weight|bias)", None),
        (r"base_model\.layer(\d)_bak\.(\d+)\.mtdin\.(.+)", r"layer\1.\2.chgc.\3"),
        (r"base_model\.layer(\d)_bak\.(.+)", r"layer\1.\2"),
        (r"base_model\.(fhgc\d)\.0\.spaAgg\.weight", r"\1.0.spatial.weight"),
        (r"base_model\.(fhgc\d)\.0\.convt\.weight", r"\1.0.temporal.weight"),
        (r"base_model\.((?:fhgc\d|conv_fhgc|conv1|bn1)\..+)", r"\1"),
        (r"new_fc\.(weight|bias)", r"fc.\1"),
    ),
    hints=((r"^fc\.", "classes (--num-classes)"), (r"\.chgc\.", "reduction (--set)")),
    key_hints=((r"^layer\d\.\d+\.", "depths (--set depths=...)"),),
    signature=(r"\.mtdin\.convt\.", r"base_model\.fhgc1\."),
)
