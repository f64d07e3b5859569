"""timm Vision Transformers as frame encoders, with checked loading of local checkpoints.

`create_vit` builds a timm ViT by name (a pretrained tag loads timm's weights through timm, which
checks keys strictly); `load_vit_weights` loads a local file in timm, OpenAI-CLIP (`visual.*`) or
DINO/iBOT layout and refuses any missing, unexpected or mis-shaped key instead of loading part of it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from .backbones import load_exact, read_state_dict
from .pretrained import timm_or_file

log = logging.getLogger(__name__)

# Wrappers self-supervised trainers put around the encoder's weights (DINO/iBOT save
# {"teacher": {"backbone.blocks...", "head.mlp..."}}; DDP adds "module.").
_NESTED_KEYS = ("teacher", "state_dict", "model")
_PREFIXES = ("module.", "backbone.", "encoder.")
# Keys of self-supervised training heads that are not part of a ViT encoder: iBOT's mask token and
# the DINO/iBOT projection head. Skipped by name and reported, never silently.
_SSL_ONLY = ("masked_embed", "mask_token", "head.mlp.", "head.last_layer", "head.last_layer2")


def create_vit(
    name: str,
    *,
    pretrained: str = "",
    num_classes: int = 0,
    img_size_px: int | None = None,
    **kwargs,
) -> nn.Module:
    """A timm VisionTransformer mapping (N, C, H, W) -> (N, num_classes or num_features).

    Args:
        name: timm model name, optionally with a pretrained tag (`vit_base_patch16_clip_224.openai`).
        pretrained: "" none; "timm": timm's weights for the tag (Hugging Face hub or its local
            cache); or a local state dict, see `load_vit_weights` (`layers.pretrained`).
        num_classes: 0 for the pooled token; for CLIP models the width of the image projection
            (512 for ViT-B), which timm keeps as `head`.
        img_size_px: input size when it differs from the name's (position embeddings are resized
            on load).
        **kwargs: other timm constructor arguments (`patch_size`, `depth`, ...), for tiny variants.
    """
    use_timm, weights_file = timm_or_file(pretrained, owner=f"ViT {name!r}")
    if img_size_px:
        kwargs["img_size"] = img_size_px
    model = timm.create_model(name, pretrained=use_timm, num_classes=num_classes, **kwargs)
    if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
        raise TypeError(f"{name!r} is not a timm VisionTransformer (no `blocks`/`patch_embed`)")
    if weights_file:
        load_vit_weights(model, weights_file)
    return model


def load_vit_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Loads a local ViT checkpoint into `model`; every encoder key must match.

    Accepted layouts: a timm state dict; an OpenAI CLIP state dict (`visual.*` keys, text tower
    ignored; converted by timm's own `checkpoint_filter_fn`); a DINO/iBOT checkpoint (optionally
    under "teacher"/"state_dict", with "module."/"backbone." prefixes). Position embeddings are
    resized to the model's image size by timm. The self-supervised training head (`head.mlp.*`,
    `head.last_layer*`, `masked_embed`) and, when the model has no head, the file's classifier are
    skipped and listed; anything else missing, unexpected or mis-shaped raises.

    Returns:
        {"loaded": [...keys], "skipped": [...keys]}
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path, nested_keys=_NESTED_KEYS, prefixes=_PREFIXES)
    skipped = sorted(k for k in state if k.startswith(_SSL_ONLY))
    state = {k: v for k, v in state.items() if k not in set(skipped)}
    state = checkpoint_filter_fn(state, model)  # CLIP `visual.*` -> timm names; pos_embed resize
    own = model.state_dict()
    if isinstance(getattr(model, "head", None), nn.Identity):
        head = sorted(k for k in state if k.startswith("head.") and k not in own)
        skipped += head
        state = {k: v for k, v in state.items() if k not in set(head)}
    load_exact(
        model,
        state,
        what=f"weights file {str(path)!r} vs {type(model).__name__} (embed_dim "
        f"{getattr(model, 'embed_dim', '?')}, depth {len(model.blocks)})",
        fix="Use a checkpoint of the same ViT architecture (timm, OpenAI CLIP or DINO/iBOT layout) "
        "or change the backbone name.",
    )
    log.info("loaded %d ViT tensors from %s; skipped %s", len(state), path, skipped)
    return {"loaded": sorted(state), "skipped": skipped}


def freeze(module: nn.Module) -> nn.Module:
    """Turns off gradients for every parameter of `module` (the caller keeps it in eval mode)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module
