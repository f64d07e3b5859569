"""UniFormer: Unified Transformer for Efficient Spatiotemporal Representation Learning (Li et al., ICLR 2022, arXiv 2201.04676).

A four-stage 3D hierarchy whose blocks share one shape (dynamic position encoding, relation
aggregator, feed-forward): stages 1-2 aggregate *locally* (a depthwise 5x5x5 convolution between
1x1x1 projections, BatchNorm), stages 3-4 *globally* (multi-head self-attention over all T*H*W
tokens, LayerNorm). The position encoding is a depthwise 3x3x3 convolution added before each block.
Layout, initialisation and parameter names follow the official `video_classification` code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from .layers.backbones import load_exact, read_state_dict
from .layers.checkpoint import NESTED_KEYS, CheckpointFilter
from .layers.pretrained import weights_file
from .registry import register_workload

# Input normalisation of the official code's configs (DATA.MEAN / DATA.STD), not ImageNet's.
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

log = logging.getLogger(__name__)

# Tiny CPU variant for the registry test: 4 frames at 32 px end at a (2, 1, 1) grid.
TINY_CLIP = {"num_frames": 4, "size_px": 32}
LN_EPS = 1e-6  # the blocks' norm_layer; the patch embeddings keep LayerNorm's default 1e-5, as officially


@dataclass(frozen=True)
class UniFormerParams:
    """Defaults: UniFormer-S, `exp/uniformer_s16x4_k400` (21.4 M params, 41.8 GFLOPs at 16x224).

    `pretrained`: the path of a video checkpoint of this model (`model_state` / `model` / state dict), or
    the official ImageNet-1K UniFormer weights, whose 2D convolutions are inflated (repeated over
    time and divided by its length) and whose classifier is dropped when the class count differs,
    as the official `get_pretrained_model`.
    """

    embed_dims: tuple = (64, 128, 320, 512)
    depths: tuple = (3, 4, 8, 3)
    head_dim: int = 64
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.1
    dropout: float = 0.0  # after the patch embedding and inside MLP / attention output (DROPOUT_RATE)
    attn_dropout: float = 0.0
    pretrained: str = ""  # a local file (see above); "" = random init


class PatchEmbed(nn.Module):
    """Strided 3D convolution, then LayerNorm over channels: (B, C, T, H, W) -> (B, D, T', H', W')."""

    def __init__(self, c_in: int, c_out: int, *, kernel: tuple, stride: tuple, padding: tuple):
        super().__init__()
        self.proj = nn.Conv3d(c_in, c_out, kernel, stride, padding)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)  # LN over D at every (t, h, w)


class ConvMlp(nn.Module):
    """The local blocks' feed-forward: 1x1x1 convolutions with GELU."""

    def __init__(self, dim: int, hidden: int, *, dropout: float):
        super().__init__()
        self.fc1 = nn.Conv3d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(hidden, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LocalBlock(nn.Module):
    """Local MHRA (official `CBlock`): DPE, then BN -> 1x1x1 -> depthwise 5x5x5 -> 1x1x1, then a conv MLP."""

    def __init__(self, dim: int, *, mlp_ratio: float, drop_path: float, dropout: float):
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm3d(dim)
        self.conv1 = nn.Conv3d(dim, dim, 1)
        self.attn = nn.Conv3d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv3d(dim, dim, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention over a (B, L, D) token sequence."""

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool, attn_dropout: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_dropout = attn_dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, N, L, d/N) each
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (B, N, L, d/N)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, length, d)))


class GlobalBlock(nn.Module):
    """Global MHRA (official `SABlock`): DPE, then pre-LN self-attention over all T*H*W tokens and an MLP."""

    def __init__(
        self, dim: int, *, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float, dropout: float,
        attn_dropout: float,
    ):
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_dropout=attn_dropout, dropout=dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), drop=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        b, d, t, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, T*H*W, D)
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens)))
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return tokens.transpose(1, 2).reshape(b, d, t, h, w)


class UniFormer(nn.Module):
    """(B, T, C, H, W) -> (B, K): stem (3x4x4, stride 2x4x4), stages at /4 /8 /16 /32, BN, mean, linear."""

    def __init__(self, p: UniFormerParams, *, num_classes: int):
        super().__init__()
        if len(p.embed_dims) != 4 or len(p.depths) != 4:
            raise ValueError(f"uniformer needs 4 stages: embed_dims {p.embed_dims}, depths {p.depths}; give 4 of each")
        if any(d % p.head_dim for d in p.embed_dims[2:]):
            raise ValueError(
                f"uniformer: embed_dims {p.embed_dims[2:]} of the attention stages must divide by head_dim "
                f"{p.head_dim}; pick widths that are multiples of it"
            )
        dims = p.embed_dims
        self.patch_embed1 = PatchEmbed(3, dims[0], kernel=(3, 4, 4), stride=(2, 4, 4), padding=(1, 0, 0))
        self.patch_embed2 = PatchEmbed(dims[0], dims[1], kernel=(1, 2, 2), stride=(1, 2, 2), padding=(0, 0, 0))
        self.patch_embed3 = PatchEmbed(dims[1], dims[2], kernel=(1, 2, 2), stride=(1, 2, 2), padding=(0, 0, 0))
        self.patch_embed4 = PatchEmbed(dims[2], dims[3], kernel=(1, 2, 2), stride=(1, 2, 2), padding=(0, 0, 0))
        self.pos_drop = nn.Dropout(p.dropout)
        drop_paths = [x.item() for x in torch.linspace(0, p.drop_path, sum(p.depths), device="cpu")]
        starts = [sum(p.depths[:i]) for i in range(4)]

        def local(stage):
            return nn.ModuleList(
                LocalBlock(dims[stage], mlp_ratio=p.mlp_ratio, drop_path=drop_paths[starts[stage] + i], dropout=p.dropout)
                for i in range(p.depths[stage])
            )

        def global_(stage):
            return nn.ModuleList(
                GlobalBlock(
                    dims[stage], num_heads=dims[stage] // p.head_dim, mlp_ratio=p.mlp_ratio, qkv_bias=p.qkv_bias,
                    drop_path=drop_paths[starts[stage] + i], dropout=p.dropout, attn_dropout=p.attn_dropout,
                )
                for i in range(p.depths[stage])
            )

        self.blocks1, self.blocks2, self.blocks3, self.blocks4 = local(0), local(1), global_(2), global_(3)
        self.norm = nn.BatchNorm3d(dims[3])
        self.num_features = dims[3]
        self.head = nn.Linear(dims[3], num_classes)
        self.apply(_init_weights)

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        """Last-stage map after the final BatchNorm: (B, T, C, H, W) -> (B, D, T/2, H/32, W/32)."""
        if clips.dim() != 5:
            raise ValueError(f"uniformer expects clips (B, T, C, H, W), got shape {tuple(clips.shape)}")
        x = self.pos_drop(self.patch_embed1(clips.transpose(1, 2)))  # (B, D1, T/2, H/4, W/4)
        for embed, blocks in (
            (None, self.blocks1), (self.patch_embed2, self.blocks2), (self.patch_embed3, self.blocks3),
            (self.patch_embed4, self.blocks4),
        ):
            if embed is not None:
                x = embed(x)
            for block in blocks:
                x = block(x)
        return self.norm(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(clips).flatten(2).mean(-1))  # (B, K): mean over T*H*W


def _init_weights(m: nn.Module) -> None:
    """The official init: linear layers truncated normal (0.02) with zero bias; convolutions keep PyTorch's."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.zeros_(m.bias)
        nn.init.ones_(m.weight)


def load_official(model: UniFormer, path: str | Path) -> dict[str, list[str]]:
    """Loads official UniFormer weights: a video checkpoint as is, ImageNet weights inflated.

    A 2D convolution kernel (D, C, k, k) whose 3D counterpart is (D, C, t, k, k) becomes the kernel
    repeated t times over time and divided by t (an inflated net gives a static clip the image's
    features); `head.*` is dropped when its class count differs. Anything else must match exactly.

    Returns:
        {"inflated": [...keys], "dropped": [...keys]}
    """
    state = read_state_dict(path, nested_keys=("model_state", "model", "state_dict"))
    own = model.state_dict()
    inflated, dropped = [], []
    for key, value in list(state.items()):
        target = own.get(key)
        is_2d_of_3d = target is not None and value.dim() == 4 and target.dim() == 5
        if is_2d_of_3d and value.shape == target.shape[:2] + target.shape[3:]:
            t = target.shape[2]
            state[key] = value.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
            inflated.append(key)
    if "head.weight" in state and state["head.weight"].shape != own["head.weight"].shape:
        dropped = ["head.bias", "head.weight"]
        for key in dropped:
            state.pop(key, None)
            state[key] = own[key]  # the new classifier keeps its fresh init
    load_exact(
        model,
        state,
        what=f"weights file {str(path)!r} vs UniFormer",
        fix="Use an official UniFormer checkpoint of the same size (embed_dims, depths, head_dim).",
    )
    log.info("loaded %s: inflated %d 2D kernels, new classifier: %s", path, len(inflated), bool(dropped))
    return {"inflated": inflated, "dropped": dropped}


@register_workload(
    "uniformer",
    params=UniFormerParams,
    sampling="clip",
    mean=KINETICS_MEAN,
    std=KINETICS_STD,
    tiny_clip=TINY_CLIP,
    tiny={"embed_dims": (8, 16, 32, 32), "depths": (1, 1, 1, 1), "head_dim": 16},
)
def build_uniformer(p: UniFormerParams, *, num_classes: int, num_frames: int) -> nn.Module:
    model = UniFormer(p, num_classes=num_classes)
    if weights_file(p.pretrained, owner="uniformer"):
        load_official(model, p.pretrained)
    return model


# The official video checkpoints (`{"model_state": ...}` or the bare state): our parameter names are theirs.
checkpoint_filter_fn = CheckpointFilter(
    paper="UniFormer (ICLR 2022)",
    rules=((r"((?:patch_embed\d|blocks\d|norm|head)\..+)", r"\1"),),
    hints=((r"^head\.", "classes (--num-classes)"), (r"^(blocks|patch_embed|norm)", "embed_dims / head_dim (--set)")),
    key_hints=((r"^blocks\d\.\d+\.", "depths (--set depths=...)"),),
    signature=(r"blocks1\.\d+\.conv1\.", r"patch_embed4\.proj\."),
    nested=("model_state", *NESTED_KEYS),
)
