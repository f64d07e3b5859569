"""Inflating 2D ImageNet weights into 3D networks (I3D "bootstrapping").

A 2D kernel (O, I, kH, kW) becomes a 3D kernel (O, I, kT, kH, kW) by tiling it kT times along time.
Two conventions exist and both are used in the literature:

- ``"repeat"`` (IBM action-recognition-pytorch, ``inflate_from_2d_model.py``): tile, no rescaling.
  A static clip then gives first-layer responses kT times the 2D ones.
- ``"mean"`` (Carreira & Zisserman; mmaction2 and PySlowFast): tile and divide by kT, so a static clip
  (away from the zero-padded clip ends) reproduces the 2D network's activations exactly.

Everything else with a matching name (BN affine and running statistics, biases) is copied as is.
3D parameters with no 2D counterpart (the 3x1x1 temporal convs of R(2+1)D / S3D, their BNs, the
video head) keep their fresh initialisation; the caller names them, and anything else that does not
match raises with the list of keys, so a `module.` prefix or a wrong depth never loads silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, get_args

import torch
from torch import nn

from .backbones import read_state_dict
from .pretrained import TIMM

InflateScale = Literal["repeat", "mean"]
INFLATE_SCALES = get_args(InflateScale)


@dataclass
class InflationReport:
    """What `inflate_into` did, key by key (3D names)."""

    inflated: list[str] = field(default_factory=list)  # 2D kernels tiled over time
    copied: list[str] = field(default_factory=list)  # same-shape tensors (BN, biases, 1x1 made 1x1x1)
    new: list[str] = field(default_factory=list)  # 3D-only keys left at their initialisation
    skipped: list[str] = field(default_factory=list)  # 2D keys deliberately dropped (ImageNet fc, aux heads)

    def summary(self) -> str:
        return (
            f"inflated {len(self.inflated)}, copied {len(self.copied)}, "
            f"newly initialised {len(self.new)}, skipped {len(self.skipped)} 2D keys"
        )


def load_2d_state_dict(source: str) -> dict[str, torch.Tensor]:
    """Loads 2D ImageNet weights from a local file, a timm tag or a torchvision tag.

    Args:
        source: a local ``.pth/.pt/.bin`` (read with ``weights_only=True``) or ``.safetensors`` file
            (see `backbones.read_state_dict`);
            ``"tv:NAME"`` for torchvision's default weights of model NAME (e.g. ``"tv:googlenet"``);
            anything else is a timm tag such as ``"resnet50.tv_in1k"`` (needs the network or the HF
            cache).
    """
    if os.path.isfile(source):
        return read_state_dict(source)
    if source == TIMM:
        raise ValueError(
            "pretrained='timm' does not say which 2D network to inflate; name its weights: a timm tag "
            "('resnet50.tv_in1k'), torchvision's ('tv:googlenet'), or a local file"
        )  # weights_only / safetensors; unwraps "state_dict", "module."
    if source.startswith("tv:"):
        import torchvision

        model = torchvision.models.get_model(source[3:], weights="DEFAULT")
        return model.state_dict()
    if os.sep in source or source.endswith((".pth", ".pt", ".bin", ".safetensors")):
        raise FileNotFoundError(f"pretrained weights file not found: {source!r}")
    import timm

    return timm.create_model(source, pretrained=True).state_dict()


def inflate_into(
    model: nn.Module,
    state_2d: dict[str, torch.Tensor],
    *,
    scale: str = "repeat",
    is_new: Callable[[str], bool] = lambda key: False,
    skip: Iterable[str] = ("fc.",),
) -> InflationReport:
    """Loads a 2D state dict into the 3D `model`, inflating kernels; strict about every key.

    Args:
        model: the 3D network whose parameter names mirror the 2D network's.
        state_2d: the 2D weights.
        scale: ``"repeat"`` (IBM, no rescale) or ``"mean"`` (divide by kT, mmaction2 / PySlowFast).
        is_new: says which 3D keys have no 2D counterpart by design (kept at their init).
        skip: prefixes of 2D keys to drop (the ImageNet classifier, GoogLeNet's aux heads).

    Raises:
        ValueError: listing 3D keys missing from the 2D weights, 2D keys that match nothing, and
            shape mismatches.
    """
    if scale not in INFLATE_SCALES:
        raise ValueError(f"inflate_scale must be one of {INFLATE_SCALES}, got {scale!r}")
    skip = tuple(skip)
    target = model.state_dict()
    report = InflationReport()
    merged: dict[str, torch.Tensor] = {}
    missing, mismatched = [], []
    for key, dst in target.items():
        src = state_2d.get(key)
        if src is None:
            # Old torchvision checkpoints carry no BN step counters; they are not weights.
            benign = is_new(key) or key.endswith("num_batches_tracked")
            (report.new if benign else missing).append(key)
            merged[key] = dst
            continue
        if src.dim() == 4 and dst.dim() == 5 and src.shape == dst.shape[:2] + dst.shape[3:]:
            k_t = dst.shape[2]
            weight = src.unsqueeze(2).repeat(1, 1, k_t, 1, 1)  # (O, I, kT, kH, kW)
            if scale == "mean":
                weight = weight / k_t
            merged[key] = weight.to(dst.dtype)
            report.inflated.append(key)
        elif src.shape == dst.shape:
            merged[key] = src.to(dst.dtype)
            report.copied.append(key)
        else:
            mismatched.append(f"{key}: 2D {tuple(src.shape)} vs 3D {tuple(dst.shape)}")
    unexpected = []
    for key in state_2d:
        if key in target:
            continue
        if key.startswith(skip):
            report.skipped.append(key)
        else:
            unexpected.append(key)
    if missing or unexpected or mismatched:
        raise ValueError(
            "2D weights do not fit the 3D model (check the depth / backbone, a 'module.' prefix, or "
            f"the width options): missing {missing[:20]}{' ...' if len(missing) > 20 else ''} "
            f"({len(missing)}), unexpected {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''} "
            f"({len(unexpected)}), shape mismatches {mismatched[:20]} ({len(mismatched)})"
        )
    model.load_state_dict(merged, strict=True)
    return report
