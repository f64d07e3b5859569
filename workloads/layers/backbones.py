"""2D image backbones from timm, run frame by frame, and checked loading of local weight files.

`create_backbone_2d` returns a headless timm model mapping (N, C, H, W) -> (N, D) features with
`num_features = D`; the video head (`SegmentClassifier`) owns the classifier. Local weights are read
without unpickling arbitrary objects and must match the model key for key.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from .pretrained import timm_or_file

log = logging.getLogger(__name__)

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def create_backbone_2d(name: str, *, pretrained: str = "") -> nn.Module:
    """A timm model without its classifier (`num_classes=0`): (N, C, H, W) -> (N, num_features).

    Args:
        name: a timm model name, optionally with a pretrained tag ("resnet50.tv_in1k" are the
            torchvision weights the TSN/TSM/IBM reference code starts from).
        pretrained: "" none; "timm": download (or take from the Hugging Face cache) timm's weights
            for `name`; or a local state dict (.safetensors, or .pth/.pt read with
            `weights_only=True`), see `load_backbone_weights` (`layers.pretrained`).
    """
    use_timm, weights_file = timm_or_file(pretrained, owner=f"backbone {name!r}")
    backbone = timm.create_model(name, pretrained=use_timm, num_classes=0)
    if not use_timm:
        start_residual_branches_open(backbone)
    if weights_file:
        load_backbone_weights(backbone, weights_file)
    return backbone


def start_residual_branches_open(backbone: nn.Module) -> None:
    """Undoes timm's zero-init of each residual block's last BN scale (torchvision's default, which
    the TSN/TSM/IBM reference code trains from).

    With zero-initialised branches every block starts as the identity, so a temporal module on the
    residual branch (TSM's shift, TAM) does nothing until those scales grow. Measured on the
    generated motion set (TSM-ResNet-18, 56 px, 8 frames, 10 epochs from random init): val top-1
    0.44 with timm's zero-init, 0.99 with the branches open.
    """
    for module in backbone.modules():
        if hasattr(module, "zero_init_last"):  # timm's BasicBlock / Bottleneck
            last = getattr(module, "bn3", None) or getattr(module, "bn2", None)
            if isinstance(last, nn.BatchNorm2d):
                nn.init.ones_(last.weight)


def read_state_dict(
    path: str | Path,
    *,
    nested_keys: tuple[str, ...] = ("state_dict", "model"),
    prefixes: tuple[str, ...] = ("module.",),
) -> dict[str, torch.Tensor]:
    """Reads a state dict from .safetensors or a torch file, never unpickling arbitrary objects.

    Weights nested under any of `nested_keys` (in that order: timm and DDP trainers use "state_dict"
    or "model") are unwrapped, and a prefix in `prefixes` that every key carries is removed
    (DDP's "module."; keys under "head." may sit beside it, as in DINO/iBOT checkpoints).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in nested_keys:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors")
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state) and all(k.startswith((prefix, "head.")) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def load_exact(model: nn.Module, state: dict, *, what: str, fix: str) -> None:
    """`load_state_dict(strict=True)`, but a mismatch raises with every missing, unexpected and
    mis-shaped key listed (`what` names the two sides, `fix` says what to do)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{what} do not match: missing {missing}; unexpected {unexpected}; shape mismatch {mismatched}. {fix}"
        )
    model.load_state_dict(state, strict=True)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Loads a local state dict into a headless backbone; every key must match.

    The file's ImageNet classifier (timm's `pretrained_cfg["classifier"]`, e.g. `fc.*`) is skipped
    because the video head is new. Any other missing or unexpected key, or a shape mismatch, raises
    with the full list: a silent partial load would train from a half-random network.

    Returns:
        {"loaded": [...keys], "skipped": [...keys]}
    """
    state = read_state_dict(path)
    head = _classifier_prefixes(backbone)
    skipped = sorted(k for k in state if k.startswith(head)) if head else []
    state = {k: v for k, v in state.items() if k not in set(skipped)}
    load_exact(
        backbone,
        state,
        what=f"weights file {str(path)!r} vs backbone {type(backbone).__name__}",
        fix="Use a state dict saved from the same timm architecture (classifier keys may differ).",
    )
    log.info("loaded %d tensors from %s; skipped classifier keys %s", len(state), path, skipped)
    return {"loaded": sorted(state), "skipped": skipped}


def resnet_stages(backbone: nn.Module) -> list[nn.Sequential]:
    """The four residual stages (`layer1..layer4`) of a timm ResNet-family model.

    Raises a clear error for other architectures, where the ResNet-specific temporal layers
    (shift, TAM, temporal pooling) have no defined place.
    """
    stages = [getattr(backbone, name, None) for name in RESNET_STAGES]
    ok = all(isinstance(s, nn.Sequential) and all(hasattr(b, "conv1") for b in s) for s in stages)
    if not ok:
        raise TypeError(
            f"expected a timm ResNet-family backbone with residual blocks in {list(RESNET_STAGES)} "
            f"(resnet18/50/101, resnet10t, resnext50_32x4d, ...); got {type(backbone).__name__}"
        )
    return stages
