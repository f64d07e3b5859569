"""AFNet: Ample and Focal Network, "Look More but Care Less in Video Recognition" (Zhang et al., NeurIPS 2022).

AF-ResNet after the official code (`ops/backbone/AF_ResNet.py`): stages 1-3 split into an ample branch
(all frames, half resolution, 1/alpha width) and a focal branch (full resolution, grouped convs) whose
frames a per-block navigation module keeps or drops with a hard Gumbel gate; an SE-style blend fuses
them. Loss = CE + lambda_rt * mean_blocks (RT_e - keep rate)^2, with staged RT and annealed temperature.

Differences from the released code, on purpose: at evaluation dropped frames are *skipped* (the kept
frames are gathered through the focal convs and scattered back; the dropped ones receive the branch's
constant response to a zero input, so the logits equal the masked computation), and the gate is
deterministic (keep iff keep-logit > skip-logit) unless `eval_gating="gumbel"` (the paper's noisy
protocol). `eval_gating="topk"` keeps exactly round(rt * T) frames per clip in every block (a fixed
budget; what `actionlab flops` needs to measure the MACs spent at a given RT on an untrained model).

`backbone=mobilenetv3`: AF-MobileNetV3-Large after `ops/backbone/AF_MobileNetv3.py` (4.5 M params):
MobileNetV3 stages 2-3 (40 and 80 wide) become ample (stride 2, same width) + focal (stride 1, pointwise
convs in 2 groups, grouped 1x1 shortcut where the width changes) branches with the same navigation; the
blend has no projection and no activation; every block shifts (TSM). The official model always shifts
(it ignores `--shift`); here `shift=false` turns it off.

Shapes (AF-ResNet50, 224 px): stem (B*T, 64, 56, 56); stage k: ample (B*T, C_k / alpha, H / 2, W / 2),
focal (B*T, C_k, H, W) on the kept frames; the fusion bottleneck carries the stride (2, 2, 1), so the
stages end at 28, 14, 14 and stage 4 (plain) at 7; then (B*T, 2048) -> dropout -> FC -> mean over T.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import make_divisible
from torch import nn

from .layers import Method, read_state_dict, temporal_shift
from .layers.checkpoint import CheckpointFilter
from .layers.pretrained import weights_file
from .params import bounded
from .registry import register_workload

SKIP, KEEP = 0, 1  # channel order of the navigation logits
STAGE_STRIDES = (2, 2, 1)  # carried by each AF stage's fusion block; stage 4 has stride 2


OFFICIAL_KEEP_BIAS = 10.0  # navigation keep-logit bias (skip: 1): every frame kept at first

@dataclass(frozen=True)
class AFNetParams:
    """Defaults: AFNet-TSM with AF-ResNet50 on Something-Something V1 (`train_sth.sh`, `opts.py`)."""

    backbone: Literal["resnet", "mobilenetv3"] = "resnet"  # resnet (AF-ResNet, `layers` / `width` / `alpha`) | mobilenetv3 (AF-MobileNetV3-Large)
    layers: tuple = (3, 4, 6, 3)  # blocks per stage: AF-ResNet50; (4, 8, 18, 3) for AF-ResNet101 (official)
    width: int = 64  # stem width; stage k has width * 2**k bottleneck planes
    alpha: int = 2  # ample branch width divisor
    patch_groups: int = 2  # groups of the focal branch's convs
    shift: bool = True  # TSM in both branches, the fusion blocks and stage 4 (AFNet-TSM)
    fold_div: int = 8
    dropout: float = 0.5
    rt: float = bounded(0.5, lo=0.0, hi=1.0)  # target ratio of frames the focal branch processes (the knob)
    lambda_rt: float = 0.5  # weight of the RT loss (scripts; opts.py default 1.0)
    t0: float = 1.0  # Gumbel temperature at the start ...
    t1: float = 0.01  # ... at the end, reached after t_end epochs (exponential per step)
    t_end: float = 50.0
    rt_begin: float = 10.0  # RT target 1.0 before; RT + (1 - RT) * 2/3, then * 1/3 until ...
    rt_end: float = 20.0  # ... RT from here on
    reference_epochs: int = 55  # t_end / rt_begin / rt_end are epochs of a run this long: scaled to the real one
    # The official keep bias of 10 (vs 1 for skip) saturates the gate: in a short run from random init
    # the temperature anneals before the RT loss gets any gradient through it and every frame stays
    # kept (measured: keep ratio 1.0 at every RT over 8 epochs). 1.0 starts the gate undecided.
    nav_keep_bias: float = OFFICIAL_KEEP_BIAS
    eval_gating: Literal["argmax", "gumbel", "topk"] = "argmax"  # argmax (deterministic) | gumbel (paper: noise at tau = t1) | topk (budget)
    execution: Literal["skip", "mask"] = "skip"  # evaluation: "skip" gathers the kept frames; "mask" convolves all (official)
    pretrained: str = ""  # a local state dict of this AF-ResNet / AF-MobileNetV3 (official ImageNet names accepted)


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1) -> list:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


def _edge_index(n: int, device, radius: int = 1) -> torch.Tensor:
    """Row/column map from an n-wide map to a min(n, 2r+1)-wide one: r border rows, the interior (one row
    standing for all), r border rows; the distinct values a stride-1, zero-padded k = 2r+1 conv of a
    constant map can take."""
    r = radius
    idx = list(range(r)) + [r] * (n - 2 * r) + list(range(r + 1, 2 * r + 1)) if n >= 2 * r + 1 else list(range(n))
    return torch.tensor(idx, device=device)


class Bottleneck(nn.Module):
    """ResNet bottleneck (stride in the 3x3), with an optional TSM shift of the residual-branch input and
    an optional per-frame gate on it (the focal blocks).

    Shortcut (bL-Net's downsampling, as the official AF-ResNet builds it): [avg-pool 3x3 / 2 when strided]
    then [1x1 conv + BN when the channels change]; identity when neither (a strided block whose channels
    stay equal, e.g. the fusion blocks of stages 1-2, has a parameter-free pooled shortcut).
    """

    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        *,
        stride: int = 1,
        groups: int = 1,
        num_frames: int,
        shift: bool,
        fold_div: int = 8,
        last_relu: bool = True,
    ):
        super().__init__()
        cout = planes * self.expansion
        c1, b1 = _conv_bn(cin, planes, 1, groups=groups)
        c2, b2 = _conv_bn(planes, planes, 3, stride=stride, groups=groups)
        c3, b3 = _conv_bn(planes, cout, 1, groups=groups)
        self.branch = nn.Sequential(
            OrderedDict(
                conv1=c1, bn1=b1, relu1=nn.ReLU(inplace=True), conv2=c2, bn2=b2, relu2=nn.ReLU(inplace=True),
                conv3=c3, bn3=b3,
            )
        )
        self.downsample = None
        if stride != 1 or cin != cout:
            pool = [nn.AvgPool2d(3, stride=stride, padding=1)] if stride != 1 else []
            proj = _conv_bn(cin, cout, 1) if cin != cout else []
            self.downsample = nn.Sequential(*pool, *proj)
        self.num_frames, self.shift, self.fold_div = num_frames, shift, fold_div
        self.last_relu = last_relu

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, *, skip: bool = False) -> torch.Tensor:
        """x (B*T, C, H, W); keep (B*T,) in {0, 1} or None (every frame); skip: gather instead of mask."""
        identity = x if self.downsample is None else self.downsample(x)
        h = temporal_shift(x, num_frames=self.num_frames, fold_div=self.fold_div) if self.shift else x
        if keep is None:
            out = self.branch(h) + identity
        elif skip and not self.training:
            rows = keep.nonzero().squeeze(1)  # the kept frames; the shift above already saw all of them
            if rows.numel() == keep.numel():
                out = self.branch(h) + identity
            else:
                out = identity + self._response_to_zero(h)  # dropped frames: branch(0), as when masked
                if rows.numel():
                    out = out.index_copy(0, rows, identity.index_select(0, rows) + self.branch(h.index_select(0, rows)))
        else:
            out = self.branch(h * keep.view(-1, 1, 1, 1).to(h.dtype)) + identity
        return F.relu(out) if self.last_relu else out

    def _response_to_zero(self, like: torch.Tensor) -> torch.Tensor:
        """branch(0) at like's resolution, (1, C_out, H, W), from a <= 3x3 map.

        A zero input gives a constant per channel after bn1; the only spatial op, the stride-1 zero-padded
        3x3, then differs only at the borders, so a 3x3 map holds every distinct value (eval-mode BN).
        """
        h, w = like.shape[-2:]
        zero = like.new_zeros(1, like.shape[1], min(h, 3), min(w, 3))
        small = self.branch(zero)  # (1, C_out, <=3, <=3)
        return small.index_select(2, _edge_index(h, like.device)).index_select(3, _edge_index(w, like.device))


class Navigation(nn.Module):
    """Per-frame keep/skip logits from the ample branch's input: GAP -> 1x1 conv (C -> 2) -> BN -> ReLU ->
    a separate 2x2 linear map per temporal position (grouped 1x1 conv, groups = T; no cross-frame mixing).

    The bias starts at 1 (skip) / 10 (keep): at first every frame is kept.
    """

    def __init__(self, cin: int, *, num_frames: int):
        super().__init__()
        self.num_frames = num_frames
        self.conv = nn.Conv2d(cin, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.temporal = nn.Conv2d(2 * num_frames, 2 * num_frames, 1, groups=num_frames, bias=True)
        self.reset_gate()

    @torch.no_grad()
    def reset_gate(self, keep_bias: float = OFFICIAL_KEEP_BIAS) -> None:
        """Skip logit bias 1, keep logit bias `keep_bias` (official: 10, every frame kept)."""
        self.temporal.bias.view(self.num_frames, 2)[:, SKIP] = 1.0
        self.temporal.bias.view(self.num_frames, 2)[:, KEEP] = keep_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.conv(x.mean((2, 3), keepdim=True))))  # (B*T, 2, 1, 1)
        h = h.view(-1, 2 * self.num_frames, 1, 1)  # (B, T*2, 1, 1): frame t owns channels 2t, 2t+1
        return self.temporal(h).view(-1, self.num_frames, 2)  # (B, T, 2) logits [skip, keep]


class AFStage(nn.Module):
    """One AF stage: n-1 ample + n-1 gated focal bottlenecks, n-1 navigation modules, fusion, 1 bottleneck."""

    def __init__(
        self, cin: int, planes: int, blocks: int, *, stride: int, alpha: int, patch_groups: int,
        num_frames: int, shift: bool, fold_div: int,
    ):
        super().__init__()
        if blocks < 2:
            raise ValueError(f"afnet: an AF stage needs >= 2 blocks (n-1 per branch + fusion), got {blocks}")
        cout, n = planes * Bottleneck.expansion, blocks - 1
        common = dict(num_frames=num_frames, shift=shift, fold_div=fold_div)
        # The last block of each branch leaves out its ReLU (the fusion applies one after blending), except
        # when the branch has a single block: the official code builds that one with its ReLU.
        relu = [i < n - 1 or n == 1 for i in range(n)]
        self.ample = nn.ModuleList(
            Bottleneck(cin if i == 0 else cout // alpha, planes // alpha, stride=2 if i == 0 else 1,
                       last_relu=relu[i], **common)
            for i in range(n)
        )
        self.focal = nn.ModuleList(
            Bottleneck(cin if i == 0 else cout, planes, groups=patch_groups, last_relu=relu[i], **common)
            for i in range(n)
        )
        self.navigation = nn.ModuleList(
            Navigation(cin if i == 0 else cout // alpha, num_frames=num_frames) for i in range(n)
        )
        self.ample_proj = nn.Sequential(*_conv_bn(cout // alpha, cout, 1))
        squeeze = max(1, cout // 16)
        self.attention = nn.Sequential(  # SE-style excitation, reduction 16, bias-free (official)
            nn.Linear(cout, squeeze, bias=False), nn.ReLU(inplace=True), nn.Linear(squeeze, cout, bias=False),
            nn.Sigmoid(),
        )
        self.fusion = Bottleneck(cout, planes, stride=stride, **common)

    def forward(self, x: torch.Tensor, gate, *, skip: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ample, focal, masks = x, x, []
        for nav, ample_block, focal_block in zip(self.navigation, self.ample, self.focal):
            keep = gate(nav(ample))  # (B, T) in {0, 1}, from the ample branch's input to this block
            masks.append(keep)
            ample = ample_block(ample)  # (B*T, C/alpha, H/2, W/2): every frame
            focal = focal_block(focal, keep.flatten(), skip=skip)  # (B*T, C, H, W): kept frames computed
        little = F.interpolate(self.ample_proj(ample), size=focal.shape[-2:], mode="nearest")  # (B*T, C, H, W)
        a = self.attention((little + focal).mean((2, 3)))[:, :, None, None]  # (B*T, C, 1, 1)
        return self.fusion(F.relu(a * little + (1.0 - a) * focal)), masks


class AFResNet(nn.Module):
    """(B*T, 3, H, W) -> pooled features (B*T, 8 * 4 * width) and the list of per-block masks (B, T)."""

    def __init__(
        self, *, layers: tuple, width: int, alpha: int, patch_groups: int, num_frames: int, shift: bool,
        fold_div: int,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"afnet: layers needs 4 stage depths, got {layers}")
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        common = dict(num_frames=num_frames, shift=shift, fold_div=fold_div)
        cin, stages = width, []
        for k, (blocks, stride) in enumerate(zip(layers[:3], STAGE_STRIDES)):
            planes = width * 2**k
            stages.append(AFStage(cin, planes, blocks, stride=stride, alpha=alpha, patch_groups=patch_groups, **common))
            cin = planes * Bottleneck.expansion
        self.stages = nn.ModuleList(stages)
        planes = width * 8
        self.layer4 = nn.Sequential(
            *(
                Bottleneck(cin if i == 0 else planes * 4, planes, stride=2 if i == 0 else 1, **common)
                for i in range(layers[3])
            )
        )
        self.num_features = planes * Bottleneck.expansion
        self.masks_per_stage = [n - 1 for n in layers[:3]]
        self.official_name = {(3, 4, 6, 3): "AF-ResNet50", (4, 8, 18, 3): "AF-ResNet101"}.get(tuple(layers), "")
        self.lr5_linears = None  # every nn.Linear (the official AF-ResNet policy)
        navigation = {id(m) for stage in self.stages for nav in stage.navigation for m in nav.modules()}
        for m in self.modules():
            # Navigation convs keep PyTorch's default (small) init: with Kaiming fan-out (fan-out 2) their
            # logits would swamp the 1 / 10 bias, and "every frame kept at the start" would not hold.
            if isinstance(m, nn.Conv2d) and id(m) not in navigation:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, frames: torch.Tensor, gate, *, skip: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(frames))))  # (B*T, width, H/4, W/4)
        masks = []
        for stage in self.stages:
            x, stage_masks = stage(x, gate, skip=skip)
            masks.extend(stage_masks)
        x = self.layer4(x)  # (B*T, 32 * width, H/32, W/32)
        return x.mean((2, 3)), masks  # (B*T, D)


# -- AF-MobileNetV3 (`ops/backbone/AF_MobileNetv3.py`) ----------------------------------------------

# MobileNetV3-Large's inverted-residual rows (Howard et al. 2019, Table 1) as the official AF version lays
# them out: (kernel, expanded width, out width, squeeze-excite, hard-swish, stride). It strides the second
# 24-wide block too (the paper's is stride 1), so the AF stages run at 28 (focal) / 14 (ample) and 14 / 7.
MBV3_LAYER0 = ((3, 16, 16, False, False, 1),)
MBV3_LAYER1 = ((3, 64, 24, False, False, 2), (3, 72, 24, False, False, 2))
# AF stages: the branch rows (ample: first strided by 2, focal: stride 1) and the fusion row with its stride.
MBV3_AF_STAGES = (
    (((5, 72, 40, True, False), (5, 120, 40, True, False)), (5, 120, 40, True, False, 2)),
    (((3, 240, 80, False, True), (3, 200, 80, False, True), (3, 184, 80, False, True)),
     (3, 184, 80, False, True, 1)),
)
MBV3_LAYER4 = ((3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1))
MBV3_LAYER5 = ((5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1))
MBV3_HEAD = (960, 1280)  # 1x1 conv 160 -> 960 (+ BN, hard-swish), GAP, Linear 960 -> 1280, hard-swish


class SqueezeExcite(nn.Module):
    """MobileNetV3 SE: GAP -> Linear (C -> C/4 rounded to 8) -> ReLU -> Linear -> hard-sigmoid, as a scale."""

    def __init__(self, channels: int):
        super().__init__()
        squeeze = make_divisible(channels // 4, 8)
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, 1, 1) channel weights."""
        return F.hardsigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class InvertedResidual(nn.Module):
    """MobileNetV3 block with a TSM shift of its input and an optional per-frame gate (the focal blocks).

    Expanding (hidden != cin): 1x1 -> BN -> act -> kxk depthwise (stride) -> BN -> [SE] -> act -> 1x1 -> BN.
    Not expanding: kxk depthwise -> BN -> act -> [SE] -> 1x1 -> BN (the SE comes after the activation here).
    act is hard-swish or ReLU. groups: of the 1x1 convs (the focal branch's 2).
    Shortcut: identity when stride 1 and cin == cout; else none, or with `project_shortcut` (focal blocks)
    a grouped 1x1 conv + BN.
    """

    def __init__(
        self, cin: int, hidden: int, cout: int, *, kernel: int, stride: int, se: bool, hswish: bool,
        num_frames: int, shift: bool, fold_div: int = 8, groups: int = 1, project_shortcut: bool = False,
    ):
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        self.expand = hidden != cin
        dw = nn.Conv2d(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False)
        if self.expand:
            layers = OrderedDict(
                conv1=nn.Conv2d(cin, hidden, 1, groups=groups, bias=False), bn1=nn.BatchNorm2d(hidden), act1=act(),
                conv2=dw, bn2=nn.BatchNorm2d(hidden), se=SqueezeExcite(hidden) if se else nn.Identity(), act2=act(),
                conv3=nn.Conv2d(hidden, cout, 1, groups=groups, bias=False), bn3=nn.BatchNorm2d(cout),
            )
        else:
            layers = OrderedDict(
                conv1=dw, bn1=nn.BatchNorm2d(hidden), act1=act(), se=SqueezeExcite(hidden) if se else nn.Identity(),
                conv2=nn.Conv2d(hidden, cout, 1, groups=groups, bias=False), bn2=nn.BatchNorm2d(cout),
            )
        self.branch = nn.Sequential(layers)
        self.identity = stride == 1 and cin == cout
        self.downsample = None
        if not self.identity and project_shortcut:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, groups=groups, bias=False),
                                            nn.BatchNorm2d(cout))
        self.stride, self.num_frames, self.shift, self.fold_div = stride, num_frames, shift, fold_div

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.identity:
            return x
        return None if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, *, skip: bool = False) -> torch.Tensor:
        """x (B*T, C, H, W); keep (B*T,) in {0, 1} or None (every frame); skip: gather instead of mask."""
        shortcut = self._shortcut(x)
        h = temporal_shift(x, num_frames=self.num_frames, fold_div=self.fold_div) if self.shift else x
        if keep is None:
            out = self.branch(h)
        elif skip and not self.training:
            rows = keep.nonzero().squeeze(1)  # the kept frames; the shift above already saw all of them
            if rows.numel() == keep.numel():
                out = self.branch(h)
            else:
                out = self._response_to_zero(h).expand(h.shape[0], -1, -1, -1)  # dropped: branch(0), as masked
                if rows.numel():
                    out = out.index_copy(0, rows, self.branch(h.index_select(0, rows)))
        else:
            out = self.branch(h * keep.view(-1, 1, 1, 1).to(h.dtype))
        return out if shortcut is None else out + shortcut

    def _response_to_zero(self, like: torch.Tensor) -> torch.Tensor:
        """branch(0) at like's resolution, (1, C_out, H, W) (eval-mode BN), from maps of <= k x k.

        A zero input is a constant per channel after bn1; the stride-1 zero-padded k x k depthwise conv of a
        constant differs only within k // 2 of the borders, so a (k x k) map holds every distinct value.
        The SE's mean is taken over the full map (expanded from the small one by index, no MACs).
        """
        if self.stride != 1:
            raise ValueError("afnet: skipping frames needs stride-1 focal blocks (the official layout has them)")
        b = self.branch
        h, w = like.shape[-2:]
        if not self.expand:  # depthwise of zero is zero: the whole response is one constant per channel
            a = b.act1(b.bn1(like.new_zeros(1, like.shape[1], 1, 1)))
            return b.bn2(b.conv2(b.se(a))).expand(-1, -1, h, w)
        a = b.act1(b.bn1(b.conv1(like.new_zeros(1, like.shape[1], 1, 1))))  # (1, hidden, 1, 1)
        r = b.conv2.kernel_size[0] // 2
        small = b.bn2(b.conv2(a.expand(-1, -1, min(h, 2 * r + 1), min(w, 2 * r + 1))))  # (1, hidden, <=k, <=k)
        rows, cols = _edge_index(h, like.device, r), _edge_index(w, like.device, r)
        if isinstance(b.se, SqueezeExcite):
            small = small * b.se.scale(small.index_select(2, rows).index_select(3, cols))
        out = b.bn3(b.conv3(b.act2(small)))
        return out.index_select(2, rows).index_select(3, cols)


def _mbv3_blocks(rows, cin: int, **common) -> tuple[nn.ModuleList, int]:
    blocks = []
    for kernel, hidden, cout, se, hswish, stride in rows:
        blocks.append(InvertedResidual(cin, hidden, cout, kernel=kernel, stride=stride, se=se, hswish=hswish, **common))
        cin = cout
    return nn.ModuleList(blocks), cin


class AFMobileStage(nn.Module):
    """One AF stage of AF-MobileNetV3: n ample + n gated focal inverted residuals, n navigation modules,
    an SE-style blend (no projection: both branches have the same width; no activation after the blend)
    and one fusion block carrying the stage stride."""

    def __init__(self, cin: int, rows: tuple, fusion_row: tuple, *, patch_groups: int, num_frames: int,
                 shift: bool, fold_div: int):
        super().__init__()
        common = dict(num_frames=num_frames, shift=shift, fold_div=fold_div)
        ample_rows = tuple((*row, 2 if i == 0 else 1) for i, row in enumerate(rows))
        self.ample, cout = _mbv3_blocks(ample_rows, cin, **common)
        self.focal, _ = _mbv3_blocks(tuple((*row, 1) for row in rows), cin, groups=patch_groups,
                                     project_shortcut=True, **common)
        widths = [cin] + [row[2] for row in rows[:-1]]
        self.navigation = nn.ModuleList(Navigation(c, num_frames=num_frames) for c in widths)
        squeeze = cout // 16
        self.attention = nn.Sequential(  # with biases here (the AF-ResNet's are bias-free)
            nn.Linear(cout, squeeze), nn.ReLU(inplace=True), nn.Linear(squeeze, cout), nn.Sigmoid(),
        )
        (self.fusion,), self.out_channels = _mbv3_blocks((fusion_row,), cout, **common)

    def forward(self, x: torch.Tensor, gate, *, skip: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ample, focal, masks = x, x, []
        for nav, ample_block, focal_block in zip(self.navigation, self.ample, self.focal):
            keep = gate(nav(ample))  # (B, T) in {0, 1}, from the ample branch's input to this block
            masks.append(keep)
            ample = ample_block(ample)  # (B*T, C, H/2, W/2): every frame
            focal = focal_block(focal, keep.flatten(), skip=skip)  # (B*T, C, H, W): kept frames computed
        little = F.interpolate(ample, size=focal.shape[-2:], mode="nearest")  # (B*T, C, H, W)
        a = self.attention((little + focal).mean((2, 3)))[:, :, None, None]  # (B*T, C, 1, 1)
        return self.fusion(a * little + (1.0 - a) * focal), masks


class AFMobileNetV3(nn.Module):
    """AF-MobileNetV3-Large: (B*T, 3, H, W) -> features (B*T, 1280) and the per-block masks (B, T).

    Shapes (224 px): stem (B*T, 16, 112, 112); layer0 112; layer1 (24 wide) 56 -> 28; AF stage 2 (40):
    focal 28, ample 14, fusion / 2 -> 14; AF stage 3 (80): focal 14, ample 7, fusion -> 14; layer4 (112) 14;
    layer5 (160) 7; 1x1 conv 960, GAP, Linear 1280, hard-swish.
    """

    official_name = "AF-MobileNetV3"
    lr5_linears = ("head_fc",)  # with the classifier: the official fc_lr5 groups (its 1280-wide Linears)

    def __init__(self, *, patch_groups: int, num_frames: int, shift: bool, fold_div: int):
        super().__init__()
        common = dict(num_frames=num_frames, shift=shift, fold_div=fold_div)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer0, cin = _mbv3_blocks(MBV3_LAYER0, 16, **common)
        self.layer1, cin = _mbv3_blocks(MBV3_LAYER1, cin, **common)
        stages = []
        for rows, fusion_row in MBV3_AF_STAGES:
            stages.append(AFMobileStage(cin, rows, fusion_row, patch_groups=patch_groups, **common))
            cin = stages[-1].out_channels
        self.stages = nn.ModuleList(stages)
        self.layer4, cin = _mbv3_blocks(MBV3_LAYER4, cin, **common)
        self.layer5, cin = _mbv3_blocks(MBV3_LAYER5, cin, **common)
        self.head_conv = nn.Conv2d(cin, MBV3_HEAD[0], 1, bias=False)
        self.head_bn = nn.BatchNorm2d(MBV3_HEAD[0])
        self.head_fc = nn.Linear(*MBV3_HEAD)
        self.num_features = MBV3_HEAD[1]
        self.masks_per_stage = [len(rows) for rows, _ in MBV3_AF_STAGES]
        navigation = {id(m) for stage in self.stages for nav in stage.navigation for m in nav.modules()}
        for m in self.modules():  # the official init, except the navigation convs (see AFResNet)
            if isinstance(m, nn.Conv2d) and id(m) not in navigation:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, frames: torch.Tensor, gate, *, skip: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = F.hardswish(self.bn1(self.conv1(frames)))  # (B*T, 16, H/2, W/2)
        for block in itertools.chain(self.layer0, self.layer1):
            x = block(x)  # (B*T, 24, H/8, W/8)
        masks = []
        for stage in self.stages:
            x, stage_masks = stage(x, gate, skip=skip)
            masks.extend(stage_masks)
        for block in itertools.chain(self.layer4, self.layer5):
            x = block(x)  # (B*T, 160, H/32, W/32)
        x = F.hardswish(self.head_bn(self.head_conv(x))).mean((2, 3))  # (B*T, 960)
        return F.hardswish(self.head_fc(x)), masks  # (B*T, 1280)


class AFNet(Method):
    """AF-ResNet + per-frame dropout/FC + average consensus, the RT loss and the gate schedules."""

    def __init__(
        self,
        backbone: AFResNet | AFMobileNetV3,
        *,
        num_classes: int,
        num_frames: int,
        dropout: float = 0.5,
        rt: float = 0.5,
        lambda_rt: float = 0.5,
        t0: float = 1.0,
        t1: float = 0.01,
        t_end: float = 50.0,
        rt_begin: float = 10.0,
        rt_end: float = 20.0,
        reference_epochs: int = 55,
        eval_gating: str = "argmax",
        execution: str = "skip",
    ):
        super().__init__()
        self.backbone = backbone
        self.num_frames, self.num_classes = num_frames, num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.num_features, num_classes)
        nn.init.normal_(self.fc.weight, std=0.001)  # TSN/TSM's new-classifier init
        nn.init.zeros_(self.fc.bias)
        self.rt, self.lambda_rt = rt, lambda_rt
        self.t0, self.t1, self.t_end = t0, t1, t_end
        self.rt_begin, self.rt_end, self.reference_epochs = rt_begin, rt_end, reference_epochs
        self.eval_gating, self.execution = eval_gating, execution
        # Schedule state (recomputed from the epoch on resume); before on_epoch_start: epoch 0.
        self.rt_target, self.temperature = 1.0, t0
        self._epoch, self._num_epochs = 0, reference_epochs
        self._steps_in_epoch, self._steps_per_epoch = 0, 0
        self._gating_override: str | None = None
        self._calibration: dict = {}
        self._reset_eval_stats()

    @property
    def paper_backbone(self) -> str:
        """The backbone's name in the paper's tables ("" for a variant the paper does not have)."""
        return getattr(self.backbone, "official_name", "")

    # -- forward -------------------------------------------------------------------------------------

    def _gate(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, T, 2) logits -> (B, T) keep mask in {0, 1} (straight-through gradient in training)."""
        mode = self._gating_override or ("train" if self.training else self.eval_gating)
        if mode == "train":
            return F.gumbel_softmax(logits, tau=self.temperature, hard=True)[..., KEEP]
        if mode == "gumbel":
            return F.gumbel_softmax(logits, tau=self.t1, hard=True)[..., KEEP]
        if mode == "all":
            return torch.ones_like(logits[..., KEEP])
        if mode == "topk":
            k = min(self.num_frames, max(0, round(self.rt * self.num_frames)))
            score = logits[..., KEEP] - logits[..., SKIP]  # (B, T)
            return torch.zeros_like(score).scatter_(1, score.topk(k, dim=1).indices, 1.0)
        return (logits[..., KEEP] > logits[..., SKIP]).to(logits.dtype)

    def forward_with_masks(self, clips: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, t = clips.shape[:2]
        if t != self.num_frames:
            raise ValueError(
                f"afnet: expected clips of {self.num_frames} frames (B, T, C, H, W), got {tuple(clips.shape)}; "
                "build the workload with num_frames equal to the sampled clip length"
            )
        skip = self.execution == "skip" and self._gating_override != "all"
        feats, masks = self.backbone(clips.flatten(0, 1), self._gate, skip=skip)  # (B*T, D), [(B, T)] * n
        logits = self.fc(self.dropout(feats))  # (B*T, K)
        return logits.view(b, t, -1).mean(1), masks  # (B, K): average consensus

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        logits, masks = self.forward_with_masks(clips)
        if not self.training and self._gating_override is None:
            kept = torch.stack([m.detach().sum() for m in masks]).float()
            self._eval_kept = kept if self._eval_kept is None else self._eval_kept + kept
            self._eval_frames += clips.shape[0] * clips.shape[1]
            self._eval_clip_shape = tuple(clips.shape[1:])
        return logits

    # -- training ------------------------------------------------------------------------------------

    def training_step(self, clips: torch.Tensor, labels: torch.Tensor) -> dict:
        logits, masks = self.forward_with_masks(clips)
        ce = F.cross_entropy(logits.float(), labels)
        keep = torch.stack([m.float().mean() for m in masks])  # batch-level keep rate per block
        loss_rt = self.lambda_rt * ((self.rt_target - keep) ** 2).mean()
        out = {
            "loss": ce + loss_rt,
            "logits": logits,
            "loss_ce": ce.detach(),
            "loss_rt": loss_rt.detach(),
            "keep_ratio": keep.mean().detach(),
            "rt_target": torch.tensor(self.rt_target),
            "temperature": torch.tensor(self.temperature),
        }
        out.update(self._per_stage(keep.detach()))
        return out

    def _per_stage(self, keep: torch.Tensor) -> dict:
        out, start = {}, 0
        for k, n in enumerate(self.backbone.masks_per_stage):
            out[f"keep_ratio/stage{k + 1}"] = keep[start : start + n].mean()
            start += n
        return out

    def _scale(self) -> float:
        return self._num_epochs / max(1, self.reference_epochs)

    def rt_target_at(self, epoch: int, num_epochs: int) -> float:
        """The staged RT target (`adjust_ratio`), its epochs scaled from `reference_epochs` to `num_epochs`."""
        s = num_epochs / max(1, self.reference_epochs)
        begin, end = self.rt_begin * s, self.rt_end * s
        if epoch < begin:
            return 1.0
        if epoch < (begin + end) / 2:
            return self.rt + (1.0 - self.rt) * 2.0 / 3.0
        if epoch < end:
            return self.rt + (1.0 - self.rt) / 3.0
        return self.rt

    def _update_temperature(self) -> None:
        # Exponential decay per step from t0 to t1 over t_end (scaled) epochs (`adjust_temperature`).
        t_end = self.t_end * self._scale()
        frac = self._steps_in_epoch / self._steps_per_epoch if self._steps_per_epoch else 0.0
        progress = self._epoch + min(1.0, frac)
        if progress >= t_end:
            self.temperature = self.t1
        else:
            self.temperature = self.t0 * (self.t1 / self.t0) ** (progress / t_end)

    def on_epoch_start(self, epoch: int, num_epochs: int, *, steps_per_epoch: int = 0, start_step: int = 0) -> None:
        # The step counters come from the loop, never from this object's past: a run resumed from a
        # checkpoint (inside an epoch or at its end) anneals exactly as one that never stopped.
        self._epoch, self._num_epochs = epoch, num_epochs
        self._steps_per_epoch, self._steps_in_epoch = steps_per_epoch, start_step
        self.rt_target = self.rt_target_at(epoch, num_epochs)
        self._update_temperature()
        self._reset_eval_stats()

    def on_step_end(self) -> None:
        self._steps_in_epoch += 1
        self._update_temperature()

    def param_groups(self) -> list[dict]:
        """The official parameter groups (`get_optim_policies`) as lr / weight-decay multipliers.

        navigation: lr x10 (no decay on BN and biases); nn.Linear (classifier and the fusion's SE FCs):
        weight lr x5, bias lr x10 without decay; other conv biases lr x2 without decay; BN: no decay.
        AF-MobileNetV3 (`ops/models_mobilenet.py`): only the 1280-wide Linears (head and classifier) get
        x5 / x10; the SE and fusion Linears train as plain weights, their biases included (lr x1, decay).
        """
        lr5 = getattr(self.backbone, "lr5_linears", None)
        fast = None if lr5 is None else {"fc", *(f"backbone.{n}" for n in lr5)}
        groups: dict[tuple, list] = {}
        for module_name, module in self.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                is_bias = name == "bias"
                if ".navigation." in f".{module_name}.":
                    key = ("navigation", 10.0, 0.0 if is_bias or isinstance(module, nn.BatchNorm2d) else 1.0)
                elif isinstance(module, nn.Linear) and fast is not None and module_name not in fast:
                    key = ("block_linear", 1.0, 1.0)
                elif isinstance(module, nn.Linear):
                    key = ("linear", 10.0, 0.0) if is_bias else ("linear", 5.0, 1.0)
                elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                    key = ("bn", 1.0, 0.0)
                else:
                    key = ("conv_bias", 2.0, 0.0) if is_bias else ("conv", 1.0, 1.0)
                groups.setdefault(key, []).append(p)
        return [
            {"name": f"{n}_lr{lr:g}_wd{wd:g}", "params": ps, "lr_scale": lr, "weight_decay_scale": wd}
            for (n, lr, wd), ps in groups.items()
        ]

    # -- compute: what the focal branch costs, what was spent ----------------------------------------

    def _reset_eval_stats(self) -> None:
        self._eval_kept: torch.Tensor | None = None
        self._eval_frames = 0
        self._eval_clip_shape: tuple | None = None

    def focal_costs(self, clip_shape: tuple) -> dict:
        """MACs of one clip of `clip_shape` (T, C, H, W): the always-paid part and each focal branch's
        part with every frame kept, counted on a weightless (meta) copy with the masked computation.

        Returns {"fixed": MACs, "focal": [MACs per block]}; MACs spent at keep ratios r_i are then
        fixed + sum_i r_i * focal_i (the official analytic count, and what skipping really spends).
        """
        from torch.utils.flop_counter import FlopCounterMode

        key = tuple(clip_shape)
        if key in self._calibration:
            return self._calibration[key]
        memo = {id(t): torch.empty_like(t, device="meta") for t in itertools.chain(self.parameters(), self.buffers())}
        memo.update({id(p): nn.Parameter(memo[id(p)], requires_grad=False) for p in self.parameters()})
        probe = copy.deepcopy(self, memo).eval()
        probe._gating_override = "all"
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            probe(torch.empty(1, *key, device="meta"))
        counts = {name.split(".", 1)[-1]: sum(ops.values()) / 2 for name, ops in counter.get_flop_counts().items()}
        focal = [
            counts.get(f"backbone.stages.{s}.focal.{i}.branch", 0.0)
            for s, n in enumerate(self.backbone.masks_per_stage)
            for i in range(n)
        ]
        total = counter.get_total_flops() / 2
        self._calibration[key] = {"fixed": total - sum(focal), "focal": focal}
        return self._calibration[key]

    def eval_stats(self) -> dict:
        """Since the last epoch start, over evaluation forwards: keep ratios and GMACs spent per clip."""
        if self._eval_kept is None or not self._eval_frames:
            return {}
        keep = (self._eval_kept / self._eval_frames).cpu()
        costs = self.focal_costs(self._eval_clip_shape)
        gmacs = (costs["fixed"] + float((keep * torch.tensor(costs["focal"])).sum())) / 1e9
        out = {"keep_ratio": float(keep.mean()), "gmacs": gmacs}
        out.update({k: float(v) for k, v in self._per_stage(keep).items()})
        return out

    def compute_report(self, clip_shape: tuple, rts: tuple = (0.25, 0.5, 1.0)) -> dict:
        """Expected (analytic) vs measured (counted on a real forward that skips) GMACs per clip at each RT.

        clip_shape: (1, T, C, H, W). Measured runs the skip execution with exactly round(rt * T) frames
        kept per clip in every focal block (the top-scoring ones), on a copy of this model (real weights,
        or zeros when this model lives on the meta device).
        """
        from torch.utils.flop_counter import FlopCounterMode

        shape = tuple(clip_shape[1:])
        costs = self.focal_costs(shape)
        fixed, focal = costs["fixed"], sum(costs["focal"])
        real = copy.deepcopy(self)
        if next(real.parameters()).device.type == "meta":
            real = real.to_empty(device="cpu")
            for t in itertools.chain(real.parameters(), real.buffers()):
                t.detach().zero_()
        real.eval()
        real.execution = "skip"
        real._gating_override = "topk"
        rows = []
        for rt in rts:
            real.rt = rt
            k = min(self.num_frames, max(0, round(rt * self.num_frames)))
            clips = torch.randn(1, *shape, device=next(real.parameters()).device)
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                real(clips)
            rows.append({
                "rt": rt,
                "kept_frames": k,
                "expected_gmacs": (fixed + rt * focal) / 1e9,
                "expected_gmacs_at_kept": (fixed + k / self.num_frames * focal) / 1e9,
                "measured_gmacs": counter.get_total_flops() / 2e9,
            })
        return {
            "fixed_gmacs": fixed / 1e9,
            "focal_gmacs": focal / 1e9,
            "params": sum(p.numel() for p in self.parameters()),
            "rows": rows,
        }


# What the AFNet README reports on Something-Something V1, 224 px, 1 clip x 1 crop; its "GFLOPs" are
# GMACs per clip: (backbone, frames, TSM, rt, GMACs).
PAPER_GMACS = (
    ("AF-ResNet50", 12, True, 0.4, 27.9),
    ("AF-ResNet50", 12, True, 0.8, 31.7),
    ("AF-ResNet50", 8, False, 0.5, 19.5),  # "Less is More": 8 frames as printed (the only script uses 12)
    ("AF-ResNet50", 8, False, 0.25, 18.3),
    ("TSM-ResNet50", 8, True, None, 32.7),
    ("AF-MobileNetV3", 12, True, 0.4, 2.2),
    ("AF-MobileNetV3", 12, True, 0.8, 2.3),
)


# The official AF-ResNet's parameter names (`ops/backbone/AF_ResNet.py`) -> this module's (AFResNet),
# as (regex on the official key, template); `{sN}` is the official 1-based stage N as our 0-based index.
_BLOCK_PARTS = r"(conv[123]|bn[123])"
OFFICIAL_BACKBONE_RULES = (
    (r"(conv1|bn1)\.(.+)", r"\1.\2"),
    (r"layer([123])\.list_gen\.(\d+)\.conv_pool\.(.+)", r"stages.{s\1}.navigation.\2.conv.\3"),
    (r"layer([123])\.list_gen\.(\d+)\.bn\.(.+)", r"stages.{s\1}.navigation.\2.bn.\3"),
    (r"layer([123])\.list_gen\.(\d+)\.conv_gs\.(.+)", r"stages.{s\1}.navigation.\2.temporal.\3"),
    (rf"layer([123])\.base_module\.(\d+)\.{_BLOCK_PARTS}\.(.+)", r"stages.{s\1}.ample.\2.branch.\3.\4"),
    (r"layer([123])\.base_module\.(\d+)\.downsample\.(.+)", r"stages.{s\1}.ample.\2.downsample.\3"),
    (rf"layer([123])\.refine_module\.(\d+)\.{_BLOCK_PARTS}\.(.+)", r"stages.{s\1}.focal.\2.branch.\3.\4"),
    (r"layer([123])\.refine_module\.(\d+)\.downsample\.(.+)", r"stages.{s\1}.focal.\2.downsample.\3"),
    (r"layer([123])\.base_transform\.(.+)", r"stages.{s\1}.ample_proj.\2"),
    (r"layer([123])\.att_gen\.fc\.(.+)", r"stages.{s\1}.attention.\2"),
    (rf"layer([123])\.fusion\.0\.{_BLOCK_PARTS}\.(.+)", r"stages.{s\1}.fusion.branch.\2.\3"),
    (r"layer([123])\.fusion\.0\.downsample\.(.+)", r"stages.{s\1}.fusion.downsample.\2"),
    (rf"layer4\.(\d+)\.{_BLOCK_PARTS}\.(.+)", r"layer4.\1.branch.\2.\3"),
    (r"layer4\.(\d+)\.downsample\.(.+)", r"layer4.\1.downsample.\2"),
)


# The official AF-MobileNetV3's names (`ops/backbone/AF_MobileNetv3.py`) -> AFMobileNetV3's; its AF stages
# 2 and 3 are our `stages.0` / `.1`. The official `fc.3` (the classifier) is not a backbone key.
_MBV3_PARTS = (
    (r"(conv[123]|bn[123])\.(.+)", r"branch.{a}.{b}"),
    (r"se\.fc\.0\.(.+)", r"branch.se.fc1.{a}"),
    (r"se\.fc\.2\.(.+)", r"branch.se.fc2.{a}"),
    (r"res_connect\.([01])\.(.+)", r"downsample.{a}.{b}"),
)


def _mbv3_rules() -> tuple:
    rules = [(r"conv\.(weight)", r"conv1.\1"), (r"bn\.(.+)", r"bn1.\1"), (r"conv_last\.(weight)", r"head_conv.\1"),
             (r"bn_last\.(.+)", r"head_bn.\1"), (r"fc\.0\.(weight|bias)", r"head_fc.\1")]
    blocks = [(r"features_head\.(0)", r"layer0.\1"), (r"features_stage1\.(\d+)", r"layer1.\1"),
              (r"features_stage4\.(\d+)", r"layer4.\1"), (r"features_stage5\.(\d+)", r"layer5.\1")]
    for official, ours in ((2, 0), (3, 1)):
        rules += [(rf"list_gen{official}\.(\d+)\.conv_pool\.(.+)", rf"stages.{ours}.navigation.\1.conv.\2"),
                  (rf"list_gen{official}\.(\d+)\.bn\.(.+)", rf"stages.{ours}.navigation.\1.bn.\2"),
                  (rf"list_gen{official}\.(\d+)\.conv_gs\.(.+)", rf"stages.{ours}.navigation.\1.temporal.\2"),
                  (rf"att_gen{official}\.fc\.([02])\.(.+)", rf"stages.{ours}.attention.\1.\2")]
        blocks += [(rf"features_stage{official}_base\.(\d+)", rf"stages.{ours}.ample.\1"),
                   (rf"features_stage{official}_refine\.(\d+)", rf"stages.{ours}.focal.\1"),
                   (rf"features_stage{official}_fuse\.(0)", rf"stages.{ours}.fusion")]
    for block, block_template in blocks:  # every block pattern has one group; the part's groups follow it
        for part, part_template in _MBV3_PARTS:
            rules.append((rf"{block}\.{part}", f"{block_template}." + part_template.format(a=r"\2", b=r"\3")))
    return tuple(rules)


OFFICIAL_MBV3_RULES = _mbv3_rules()


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def official_key(key: str) -> str | None:
    """An official AF-ResNet / AF-MobileNetV3 parameter name -> ours (relative to the backbone), or None."""
    for pattern, template in OFFICIAL_BACKBONE_RULES + OFFICIAL_MBV3_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return re.sub(r"\{s(\d)\}", lambda s: str(int(s.group(1)) - 1), m.expand(template))
    return None


def from_official_names(state: dict) -> dict:
    """A state dict of the official AF-ResNet or AF-MobileNetV3 (classifier removed) in this module's names."""
    out, unknown = {}, []
    for key, value in state.items():
        ours = official_key(key)
        if ours is None:
            unknown.append(key)
        else:
            out[ours] = value
    if unknown:
        raise ValueError(f"afnet: {len(unknown)} keys are not official AF-ResNet names (nor AF-MobileNetV3's): "
                         f"{unknown[:6]}")
    return out


# The official video checkpoints (`ops/models.py`'s TSN around the AF backbone as `base_model`; main.py
# saves {'state_dict': DDP state}): the backbone rules above, under `base_model.`.
checkpoint_filter_fn = CheckpointFilter(
    paper="AFNet (NeurIPS 2022)",
    rules=(
        *((rf"base_model\.{pattern}", f"backbone.{template}") for pattern, template in OFFICIAL_BACKBONE_RULES),
        *((rf"base_model\.{pattern}", f"backbone.{template}") for pattern, template in OFFICIAL_MBV3_RULES),
        (r"base_model\.fc\.3\.(.+)", r"fc.\1"),  # AF-MobileNetV3: its fc.0 is the 960 -> 1280 head Linear
        (r"new_fc\.(.+)", r"fc.\1"),
        (r"base_model\.fc\.(.+)", r"fc.\1"),  # dropout 0: the backbone's own fc is the classifier
    ),
    hints=((r"navigation\.\d+\.temporal", "frames (--frames)"), (r"^fc\.", "classes (--num-classes)"),
           (r"^backbone\.", "width / alpha / patch_groups (--set)")),
    key_hints=((r"^backbone\.(layer[015]|head_)", "backbone (--set backbone=mobilenetv3 for AF-MobileNetV3)"),
               (r"(stages\.\d+\.(ample|focal|navigation)\.\d+|layer4\.\d+)\.", "depth (--set layers=...)"),),
    signature=(r"\.list_gen\.\d+\.conv_gs\.", r"\.list_gen[23]\.\d+\.conv_gs\."),
)


# AF-MobileNetV3 has one layout, CPU-test sized as it is at 32 px: 4.3 M params, 0.03 GMACs per 4-frame clip.
TINY_VARIANTS = {"mobilenetv3": {"backbone": "mobilenetv3"}}


def compute_by_ratio(params: dict | AFNetParams, *, num_frames: int, size_px: int, num_classes: int) -> list[dict]:
    """Expected vs measured GMACs per clip at each selection ratio, beside the paper's figure.

    The ratios are those of the paper's table for this backbone and frame count (0.25 / 0.5 at 8
    frames and 0.4 / 0.8 at 12 for AF-ResNet50), plus the configured `rt`: that of a resolved
    `AFNetParams`, or the `rt` of a mapping of overrides if it sets one; its row is marked `configured`. Measured: a real forward on zero weights that keeps exactly
    round(rt * T) frames in every focal block (`AFNet.compute_report`). The paper's figure is given
    only for its networks (default widths) at 224 px.

    Returns:
        one dict per ratio, increasing: rt, kept_frames, expected_gmacs, expected_gmacs_at_kept,
        measured_gmacs, paper_gmacs (None where the table has no such row), configured.
    """
    from .registry import get_workload

    spec = get_workload("afnet")
    p = spec.resolve_params(params)
    with torch.device("meta"):
        model = spec.build(p, num_classes=num_classes, num_frames=num_frames, weights=False)
    defaults = AFNetParams()
    comparable = size_px == 224 and all(getattr(p, k) == getattr(defaults, k) for k in ("width", "alpha", "patch_groups"))
    paper = [row for row in PAPER_GMACS if comparable and row[0] == model.paper_backbone and row[1] == num_frames
             and row[3] is not None]
    configured = p.rt if isinstance(params, AFNetParams) or "rt" in (params or {}) else None
    ratios = sorted({row[3] for row in paper} | ({configured} if configured is not None else set()))
    report = model.compute_report((1, num_frames, 3, size_px, size_px), rts=tuple(ratios))
    rows = []
    for row in report["rows"]:
        quoted = [g for (_, _, _, rt, g) in paper if rt == row["rt"]]
        rows.append({**row, "paper_gmacs": quoted[0] if quoted else None, "configured": row["rt"] == configured})
    return rows


@register_workload(
    "afnet",
    params=AFNetParams,
    sampling="segments",
    tiny={"layers": (2, 2, 2, 1), "width": 8},
    tiny_variants=TINY_VARIANTS,
    paper_gmacs=PAPER_GMACS,
    compute_by_ratio=compute_by_ratio,
)
def build_afnet(p: AFNetParams, *, num_classes: int, num_frames: int) -> nn.Module:
    if not (0 < p.t1 <= p.t0):
        raise ValueError(f"afnet: temperatures need 0 < t1 <= t0, got t0={p.t0}, t1={p.t1}")
    if p.backbone == "mobilenetv3":
        defaults = AFNetParams()
        resnet_only = [k for k in ("layers", "width", "alpha") if _plain(getattr(p, k)) != _plain(getattr(defaults, k))]
        if resnet_only:
            raise ValueError(f"afnet: {resnet_only} set AF-ResNet's shape and do nothing for backbone=mobilenetv3 "
                             "(AF-MobileNetV3-Large has one fixed layout); drop them or use backbone=resnet")
        if p.patch_groups not in (1, 2, 4, 8):
            raise ValueError(f"afnet: patch_groups {p.patch_groups} must divide the MobileNetV3 widths (1, 2, 4 or 8)")
        backbone = AFMobileNetV3(patch_groups=p.patch_groups, num_frames=num_frames, shift=p.shift, fold_div=p.fold_div)
    else:
        if p.width % (2 * p.alpha) or p.width % p.patch_groups:
            raise ValueError(f"afnet: width {p.width} must be divisible by 2 * alpha and by patch_groups")
        backbone = AFResNet(
            layers=tuple(p.layers), width=p.width, alpha=p.alpha, patch_groups=p.patch_groups,
            num_frames=num_frames, shift=p.shift, fold_div=p.fold_div,
        )
    for stage in backbone.stages:
        for nav in stage.navigation:
            nav.reset_gate(p.nav_keep_bias)
    if weights_file(p.pretrained, owner="afnet"):
        state = read_state_dict(p.pretrained)
        mobile = p.backbone == "mobilenetv3"  # the official AF-MobileNetV3's fc.0 is its head Linear (ours: head_fc)
        state = {k: v for k, v in state.items() if not k.startswith("fc.") or (mobile and k.startswith("fc.0."))}
        if any(".list_gen" in k or ".base_module." in k or k.startswith("features_") for k in state):
            state = from_official_names(state)  # the official ImageNet AF-ResNet / AF-MobileNetV3 checkpoints
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        describe = "AF-MobileNetV3" if p.backbone == "mobilenetv3" else f"AF-ResNet{tuple(p.layers)}"
        if missing or unexpected:
            raise ValueError(
                f"afnet: {p.pretrained!r} does not match {describe}: "
                f"missing {sorted(missing)[:10]}; unexpected {sorted(unexpected)[:10]}. "
                "Convert the weights to this module's parameter names first."
            )
    return AFNet(
        backbone, num_classes=num_classes, num_frames=num_frames, dropout=p.dropout, rt=p.rt,
        lambda_rt=p.lambda_rt, t0=p.t0, t1=p.t1, t_end=p.t_end, rt_begin=p.rt_begin, rt_end=p.rt_end,
        reference_epochs=p.reference_epochs, eval_gating=p.eval_gating, execution=p.execution,
    )
