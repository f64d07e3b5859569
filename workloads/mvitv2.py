"""MViTv2: Improved Multiscale Vision Transformers (Li et al., CVPR 2022, arXiv 2112.01526), video MViTv2-S.

A multiscale transformer on 3D patches: every block pools its queries, keys and values with a
depthwise 3D convolution (pooling attention), adds the pooled query back to the attention output
(residual pooling) and a decomposed (t, h, w) relative position bias to the attention logits.
Layout, initialisation and parameter names follow PySlowFast's `MViT` with `MVITv2_S_16x4.yaml`.
"""

from __future__ import annotations

import math
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

# Input normalisation of PySlowFast's configs (DATA.MEAN / DATA.STD), not ImageNet's.
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

# Tiny CPU variant for the registry test: 4 frames at 32 px give a (2, 8, 8) token grid.
TINY_CLIP = {"num_frames": 4, "size_px": 32}
LN_EPS = 1e-6  # PySlowFast's norm_layer = partial(nn.LayerNorm, eps=1e-6)


@dataclass(frozen=True)
class MViTv2Params:
    """Defaults: PySlowFast `configs/Kinetics/MVITv2_S_16x4.yaml` (34.5 M params, 64 GFLOPs at 16x224).

    `stage_starts` are the blocks that double the width and the heads and pool queries by
    `q_stride` (PySlowFast's DIM_MUL / HEAD_MUL / POOL_Q_STRIDE, which coincide in every MViTv2
    video config). Queries are pooled (kernel `pool_kernel`, stride 1) in every other block too, as the
    official config lists a stride for every block. Keys and values start at stride `kv_stride` and
    shrink with the query strides (POOL_KV_STRIDE_ADAPTIVE).
    """

    embed_dim: int = 96
    num_heads: int = 1
    depth: int = 16
    stage_starts: tuple = (1, 3, 14)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_kernel: tuple = (3, 7, 7)
    patch_stride: tuple = (2, 4, 4)
    patch_padding: tuple = (1, 3, 3)
    pool_kernel: tuple = (3, 3, 3)
    q_stride: tuple = (1, 2, 2)
    kv_stride: tuple = (1, 8, 8)
    img_size_px: int = 224  # sizes the relative position tables (other sizes interpolate them, as officially)
    rel_pos_spatial: bool = True
    rel_pos_temporal: bool = True
    residual_pooling: bool = True
    drop_path: float = 0.2
    dropout: float = 0.5  # before the classifier (MODEL.DROPOUT_RATE)
    pretrained: str = ""  # a local PySlowFast checkpoint (`model_state`) or state dict of this model


def round_width(width: float, multiplier: float, *, divisor: int = 1) -> int:
    """PySlowFast's width rounding: `width * multiplier` to a multiple of `divisor`, never below 90%."""
    width = width * multiplier
    out = max(divisor, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


def _pool(tokens: torch.Tensor, pool: nn.Module | None, thw: tuple, *, has_cls: bool, norm=None):
    """Pools (B, N, L, C) tokens on their (T, H, W) grid; a leading cls token is kept aside.

    Returns the pooled (B, N, 1 + t*h*w, C) tokens and the new grid (t, h, w).
    """
    if pool is None:
        return tokens, thw
    b, n, _, c = tokens.shape
    cls, grid = (tokens[:, :, :1], tokens[:, :, 1:]) if has_cls else (None, tokens)
    grid = grid.reshape(b * n, *thw, c).permute(0, 4, 1, 2, 3)  # (B*N, C, T, H, W)
    grid = pool(grid)
    thw = tuple(grid.shape[2:])
    grid = grid.reshape(b, n, c, -1).transpose(2, 3)  # (B, N, t*h*w, C)
    tokens = torch.cat([cls, grid], 2) if has_cls else grid
    if norm is not None:
        tokens = norm(tokens)
    return tokens, thw


def _table(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """The (length, C) relative position table, linearly resized when the clip size differs (as officially)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.t()[None], size=length, mode="linear")  # (1, C, length)
    return resized[0].t()


def _offsets(q_len: int, k_len: int, device) -> torch.Tensor:
    """(q_len, k_len) indices into a relative table: positions scaled to the finer grid, shifted >= 0."""
    q_ratio, k_ratio = max(k_len / q_len, 1.0), max(q_len / k_len, 1.0)
    q_pos = torch.arange(q_len, device=device)[:, None] * q_ratio
    k_pos = torch.arange(k_len, device=device)[None, :] * k_ratio
    return (q_pos - k_pos + (k_len - 1) * k_ratio).long()


class PoolingAttention(nn.Module):
    """Multi-head pooling attention with decomposed relative positions and residual pooling.

    (B, L, dim) tokens on a (T, H, W) grid (+1 cls) -> (B, 1 + t*h*w, dim_out) on the query-pooled grid.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        *,
        input_size: tuple,
        num_heads: int,
        qkv_bias: bool,
        kernel_q: tuple,
        kernel_kv: tuple,
        stride_q: tuple,
        stride_kv: tuple,
        rel_pos_spatial: bool,
        rel_pos_temporal: bool,
        residual_pooling: bool,
        has_cls: bool = True,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.dim_out = dim_out
        head_dim = dim_out // num_heads
        self.has_cls = has_cls
        self.residual_pooling = residual_pooling
        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        def pool(kernel, stride):  # depthwise conv shared by the heads; none when it would be the identity
            if math.prod(kernel) == 1 and math.prod(stride) == 1:
                return None, None
            conv = nn.Conv3d(
                head_dim, head_dim, kernel, stride=stride, padding=[k // 2 for k in kernel], groups=head_dim, bias=False
            )
            return conv, nn.LayerNorm(head_dim, eps=LN_EPS)

        self.pool_q, self.norm_q = pool(kernel_q, stride_q)
        self.pool_k, self.norm_k = pool(kernel_kv, stride_kv)
        self.pool_v, self.norm_v = pool(kernel_kv, stride_kv)

        self.rel_pos_spatial = rel_pos_spatial
        self.rel_pos_temporal = rel_pos_temporal
        if rel_pos_spatial:
            if input_size[1] != input_size[2]:
                raise ValueError(f"relative positions need a square token grid, got {input_size}; use square crops")
            size = input_size[1]
            span = 2 * max(size // stride_q[1], size // stride_kv[1]) - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(span, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(span, head_dim))
            nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
            nn.init.trunc_normal_(self.rel_pos_w, std=0.02)
        if rel_pos_temporal:
            self.rel_pos_t = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            nn.init.trunc_normal_(self.rel_pos_t, std=0.02)

    def _rel_bias(self, q: torch.Tensor, q_thw: tuple, k_thw: tuple) -> torch.Tensor:
        """Decomposed bias on the grid part of the logits: (B, N, qt*qh*qw, kt*kh*kw)."""
        b, n, _, c = q.shape
        (qt, qh, qw), (kt, kh, kw) = q_thw, k_thw
        rq = q[:, :, 1:] if self.has_cls else q
        rq = rq.reshape(b, n, qt, qh, qw, c)  # (B, N, qt, qh, qw, C)
        bias = q.new_zeros(b, n, qt, qh, qw, kt, kh, kw)
        if self.rel_pos_spatial:
            rh = _table(self.rel_pos_h, 2 * max(qh, kh) - 1)[_offsets(qh, kh, q.device)]  # (qh, kh, C)
            rw = _table(self.rel_pos_w, 2 * max(qw, kw) - 1)[_offsets(qw, kw, q.device)]  # (qw, kw, C)
            bias = bias + torch.einsum("bnthwc,hkc->bnthwk", rq, rh)[:, :, :, :, :, None, :, None]
            bias = bias + torch.einsum("bnthwc,wkc->bnthwk", rq, rw)[:, :, :, :, :, None, None, :]
        if self.rel_pos_temporal:
            rt = _table(self.rel_pos_t, 2 * max(qt, kt) - 1)[_offsets(qt, kt, q.device)]  # (qt, kt, C)
            bias = bias + torch.einsum("bnthwc,tkc->bnthwk", rq, rt)[:, :, :, :, :, :, None, None]
        return bias.reshape(b, n, qt * qh * qw, kt * kh * kw)

    def forward(self, x: torch.Tensor, thw: tuple) -> tuple[torch.Tensor, tuple]:
        b, length, _ = x.shape
        qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, N, L, C)
        q, k, v = qkv.unbind(0)
        q, q_thw = _pool(q, self.pool_q, thw, has_cls=self.has_cls, norm=self.norm_q)
        k, k_thw = _pool(k, self.pool_k, thw, has_cls=self.has_cls, norm=self.norm_k)
        v, _ = _pool(v, self.pool_v, thw, has_cls=self.has_cls, norm=self.norm_v)

        mask = None
        if self.rel_pos_spatial or self.rel_pos_temporal:
            s = int(self.has_cls)
            mask = F.pad(self._rel_bias(q, q_thw, k_thw), (s, 0, s, 0))  # (B, N, Lq, Lk): none on cls rows/cols
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, N, Lq, C)
        if self.residual_pooling:
            out = out + (F.pad(q[:, :, 1:], (0, 0, 1, 0)) if self.has_cls else q)  # cls row gets no residual
        out = out.transpose(1, 2).reshape(b, -1, self.dim_out)  # (B, Lq, N*C)
        return self.proj(out), q_thw


class MultiScaleBlock(nn.Module):
    """Pre-norm block: pooling attention (widening to dim_out inside it) + MLP; the skip is max-pooled."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        *,
        num_heads: int,
        input_size: tuple,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        kernel: tuple,
        stride_q: tuple,
        stride_kv: tuple,
        rel_pos_spatial: bool,
        rel_pos_temporal: bool,
        residual_pooling: bool,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = PoolingAttention(
            dim,
            dim_out,
            input_size=input_size,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            kernel_q=kernel,
            kernel_kv=kernel,
            stride_q=stride_q,
            stride_kv=stride_kv,
            rel_pos_spatial=rel_pos_spatial,
            rel_pos_temporal=rel_pos_temporal,
            residual_pooling=residual_pooling,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim_out, eps=LN_EPS)
        self.mlp = Mlp(dim_out, hidden_features=int(dim_out * mlp_ratio), out_features=dim_out)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        skip_kernel = [s + 1 if s > 1 else s for s in stride_q]
        self.pool_skip = (
            nn.MaxPool3d(skip_kernel, stride_q, [k // 2 for k in skip_kernel]) if math.prod(stride_q) > 1 else None
        )

    def forward(self, x: torch.Tensor, thw: tuple) -> tuple[torch.Tensor, tuple]:
        x_norm = self.norm1(x)
        x_attn, thw_new = self.attn(x_norm, thw)
        if self.proj is not None:
            x = self.proj(x_norm)  # widened skip, from the normalised input (dim_mul_in_att)
        x_skip, _ = _pool(x[:, None], self.pool_skip, thw, has_cls=True)
        x = x_skip[:, 0] + self.drop_path(x_attn)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, thw_new


class MViTv2(nn.Module):
    """(B, T, C, H, W) -> (B, K): 3D patch embedding, multiscale blocks, LayerNorm, cls token -> linear."""

    def __init__(self, p: MViTv2Params, *, num_classes: int, num_frames: int):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            3, p.embed_dim, p.patch_kernel, stride=p.patch_stride, padding=p.patch_padding
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, p.embed_dim))
        input_size = [num_frames // p.patch_stride[0]] + [p.img_size_px // s for s in p.patch_stride[1:]]
        if min(input_size) < 1:
            raise ValueError(
                f"mvitv2: {num_frames} frames at {p.img_size_px} px give an empty token grid {input_size}; "
                f"use at least {p.patch_stride[0]} frames and {max(p.patch_stride[1:])} px"
            )
        drop_paths = [x.item() for x in torch.linspace(0, p.drop_path, p.depth, device="cpu")]
        kv_stride = list(p.kv_stride)
        dim, heads = p.embed_dim, p.num_heads
        self.blocks = nn.ModuleList()
        for i in range(p.depth):
            multiplier = 2.0 if i in p.stage_starts else 1.0
            stride_q = tuple(p.q_stride) if i in p.stage_starts else (1, 1, 1)
            kv_stride = [max(s // q, 1) for s, q in zip(kv_stride, stride_q)]
            heads = round_width(heads, multiplier)
            # PySlowFast rounds the width to a multiple of the heads multiplied once more (a quirk kept).
            dim_out = round_width(dim, multiplier, divisor=round_width(heads, multiplier))
            self.blocks.append(
                MultiScaleBlock(
                    dim,
                    dim_out,
                    num_heads=heads,
                    input_size=tuple(input_size),
                    mlp_ratio=p.mlp_ratio,
                    qkv_bias=p.qkv_bias,
                    drop_path=drop_paths[i],
                    kernel=tuple(p.pool_kernel),
                    stride_q=stride_q,
                    stride_kv=tuple(kv_stride),
                    rel_pos_spatial=p.rel_pos_spatial,
                    rel_pos_temporal=p.rel_pos_temporal,
                    residual_pooling=p.residual_pooling,
                )
            )
            input_size = [s // q for s, q in zip(input_size, stride_q)]
            dim = dim_out
        self.num_features = dim
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Module()
        self.head.dropout = nn.Dropout(p.dropout)
        self.head.projection = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def _tokens(self, clips: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        if clips.dim() != 5:
            raise ValueError(f"mvitv2 expects clips (B, T, C, H, W), got shape {tuple(clips.shape)}")
        x = self.patch_embed.proj(clips.transpose(1, 2))  # (B, D, T', H', W')
        thw = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)  # (B, T'*H'*W', D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)  # (B, 1 + L, D)
        for block in self.blocks:
            x, thw = block(x, thw)
        return x, thw  # (B, 1 + t*h*w, D), before the final norm

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        """Last-block tokens as a map (B, D, T', h, w): before the final norm, cls dropped.

        This is the map SV-Mix hooks on MViT (`feature_map7x7` in its `mvit.py`: the tokens after the
        last block, before `norm`).
        """
        x, thw = self._tokens(clips)
        return x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *thw)  # (B, D, T', h, w)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head.projection(self.head.dropout(feats))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x, _ = self._tokens(clips)
        return self.forward_head(self.norm(x)[:, 0])  # (B, K): from the normalised cls token


def _init_weights(m: nn.Module) -> None:
    """PySlowFast's MViT init: truncated normal (0.02) weights, linear biases and LayerNorm biases at 0.02."""
    if isinstance(m, (nn.Linear, nn.Conv3d)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.constant_(m.bias, 0.02)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0.02)
        nn.init.constant_(m.weight, 1.0)


def load_official(model: MViTv2, path: str | Path) -> None:
    """Loads a PySlowFast MViTv2 checkpoint (`{"model_state": ...}`) or a state dict saved from this model.

    Parameter names equal PySlowFast's, so every key must match exactly; a checkpoint with another
    class count needs `num_classes` set to it (fine-tune from it by replacing `head.projection` after).
    """
    state = read_state_dict(path, nested_keys=("model_state", "state_dict", "model"))
    load_exact(
        model,
        state,
        what=f"weights file {str(path)!r} vs MViTv2",
        fix="Use a PySlowFast MViTv2 checkpoint of the same config (depth, widths, frames and crop size).",
    )


@register_workload(
    "mvitv2",
    params=MViTv2Params,
    sampling="clip",
    mean=KINETICS_MEAN,
    std=KINETICS_STD,
    tiny_clip=TINY_CLIP,
    tiny={"embed_dim": 16, "depth": 4, "stage_starts": (1, 3), "kv_stride": (1, 4, 4), "img_size_px": 32},
)
def build_mvitv2(p: MViTv2Params, *, num_classes: int, num_frames: int) -> nn.Module:
    model = MViTv2(p, num_classes=num_classes, num_frames=num_frames)
    if weights_file(p.pretrained, owner="mvitv2"):
        load_official(model, p.pretrained)
    return model


# PySlowFast's checkpoints (`{"model_state": ...}`): our parameter names are theirs.
checkpoint_filter_fn = CheckpointFilter(
    paper="MViTv2 (CVPR 2022; PySlowFast)",
    rules=((r"((?:patch_embed|blocks|norm|head)\..+|cls_token)", r"\1"),),
    hints=((r"\.rel_pos_t$", "frames (--frames)"), (r"\.rel_pos_[hw]$", "img_size_px (--set)"),
           (r"^head\.", "classes (--num-classes)"), (r"^(blocks|patch_embed|norm|cls)", "embed_dim (--set)")),
    key_hints=((r"^blocks\.\d+\.", "depth / stage_starts (--set)"),),
    signature=(r"blocks\.\d+\.attn\.pool_q\.", r"blocks\.\d+\.attn\.rel_pos_t"),
    nested=("model_state", *NESTED_KEYS),
)
