"""HSAR: Less is More, Decoupled High-Semantic Encoding (Zhang et al., ACM ICMR 2023, DOI 10.1145/3591106.3592233).

Two decoupled streams: a frozen self-supervised ViT-B/16 sees only 3 full-size frames (first, a
predicted key frame, last); a from-scratch causal Temporal Motion Transformer (TMT) sees many tiny
RGB + motion frames, one token each; a causal attention fusion merges both; CE + a key-frame loss.

Motion input: the official code runs OpenCV Farneback flow on the CPU inside `forward`. Here it is
computed on the clip's device by `MotionInput`: a pyramidal Lucas-Kanade flow in PyTorch (2 channels,
pixels at `frame_size_px`, the same pairing: each TMT frame with the next, the last with itself) or,
as a cheaper proxy, RGB frame differences (`motion: diff`). Neither is Farneback; see the tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers.checkpoint import CheckpointError, CheckpointFilter, block_rules
from .layers.method import Method
from .layers.vit import create_vit, freeze
from .registry import IMAGENET_MEAN, IMAGENET_STD, register_workload

log = logging.getLogger(__name__)

MOTIONS = {"flow": 2, "diff": 3, "none": 0}  # motion input -> channels added to RGB
Motion = Literal[tuple(MOTIONS)]  # the choices of `HSARParams.motion`: the keys above, declared once
NUM_SPATIAL_FRAMES = 3  # first, key, last: hard-coded in the official code
# The official TMT attention splits D into 16 heads of D/16 but scales by 1/sqrt(64), the default of
# an unused `dim_head` argument; kept, since the released weights were trained with it.
TMT_SCALE_DIM = 64
_MAX_POSITIONS = 200  # the official sinusoid table

# Tiny CPU variant for the registry test: 8 frames at 32 px.
TINY_CLIP = {"num_frames": 8, "size_px": 32}


@dataclass(frozen=True)
class HSARParams:
    """Defaults: the released HSAR-Base K400 config (64 frames, skip_mo 4 -> 16 TMT frames, D 2048).

    Spatial weights: the official code loads the iBOT ViT-B/16 teacher (`pretrained` = the path of a
    local `checkpoint_teacher.pth`, checked key by key); timm has no iBOT weights, and
    `vit_base_patch16_224.dino` with `pretrained: timm` is the nearest timm tag (a deviation).
    """

    spatial_backbone: str = "vit_base_patch16_224.dino"
    pretrained: str = ""  # "" | "timm" | a local file (workloads.layers.pretrained)
    spatial_img_size_px: int = 224
    spatial_depth: int = 0  # 0 = as named; fewer blocks only for tiny variants
    freeze_spatial: bool = True
    dim: int = 2048  # D of TMT and fusion (Large: 3072)
    frame_size_px: int = 64  # TMT input resolution
    skip_mo: int = 4  # TMT sees every skip_mo-th frame
    motion: Motion = "flow"  # "flow" (on-device Lucas-Kanade), "diff" (frame differences), "none"
    stem_dim: int = 768
    stem_patch_px: int = 16
    depth: int = 6
    num_heads: int = 16
    mlp_dim: int = 1024
    fusion_depth: int = 6
    fusion_heads: int = 12
    dropout: float = 0.1
    emb_dropout: float = 0.1
    kf_weight: float = 1.0
    kf_loss_on_probs: bool = True  # official: CE over the predictor's softmax (a double softmax)


# --- motion input -------------------------------------------------------------------------------

def _warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """img (N, 1, H, W) sampled at x + flow (N, 2, H, W), in pixels."""
    n, _, h, w = img.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=img.device, dtype=img.dtype), torch.arange(w, device=img.device, dtype=img.dtype),
        indexing="ij",
    )
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0  # (N, H, W) in [-1, 1]
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    return F.grid_sample(img, torch.stack([gx, gy], -1), mode="bilinear", padding_mode="border", align_corners=True)


def lucas_kanade_flow(
    prev: torch.Tensor, nxt: torch.Tensor, *, window: int = 7, num_iters: int = 3, min_size_px: int = 8, reg: float = 1.0
) -> torch.Tensor:
    """Dense coarse-to-fine Lucas-Kanade flow from `prev` to `nxt`, on their device.

    Hand-written because neither PyTorch nor timm has optical flow, and the official Farneback
    (OpenCV) runs on the CPU.

    Args:
        prev, nxt: (N, 1, H, W) grey frames on a 0..255 scale.
        window: box window of the normal equations (Farneback's `winsize` 8 in the official code).
        num_iters: warping iterations per pyramid level.
        min_size_px: coarsest pyramid level's smaller side.
        reg: added to the normal equations' diagonal (keeps flat regions at zero flow).

    Returns:
        (N, 2, H, W) flow (dx, dy) in pixels: prev(y, x) ~ nxt(y + dy, x + dx), as Farneback's.
    """
    pyramid = [(prev, nxt)]
    while min(pyramid[-1][0].shape[-2:]) // 2 >= min_size_px:
        p, q = pyramid[-1]
        pyramid.append((F.avg_pool2d(p, 2), F.avg_pool2d(q, 2)))
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=prev.device, dtype=prev.dtype) / 8
    kernels = torch.stack([sobel, sobel.t()])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    flow = None
    for p, q in reversed(pyramid):
        if flow is None:
            flow = torch.zeros(p.shape[0], 2, *p.shape[-2:], device=p.device, dtype=p.dtype)
        else:
            flow = 2.0 * F.interpolate(flow, size=p.shape[-2:], mode="bilinear", align_corners=False)
        for _ in range(num_iters):
            warped = _warp(q, flow)
            grads = F.conv2d(F.pad(0.5 * (p + warped), (1, 1, 1, 1), mode="replicate"), kernels)  # (N, 2, h, w)
            ix, iy, it = grads[:, :1], grads[:, 1:], warped - p
            sums = F.avg_pool2d(
                torch.cat([ix * ix, iy * iy, ix * iy, ix * it, iy * it], 1), window, stride=1,
                padding=window // 2, count_include_pad=False,
            )
            sxx, syy, sxy, sxt, syt = (sums[:, i : i + 1] for i in range(5))
            sxx, syy = sxx + reg, syy + reg
            det = sxx * syy - sxy * sxy
            du = (sxy * syt - syy * sxt) / det  # solves [[sxx, sxy], [sxy, syy]] d = -[sxt, syt]
            dv = (sxy * sxt - sxx * syt) / det
            flow = flow + torch.cat([du, dv], 1)
    return flow


class MotionInput(nn.Module):
    """(B, N, 3, h, w) normalised TMT frames -> (B, N, c, h, w) motion channels, on the same device.

    Frame i is paired with frame i + 1 and the last frame with itself (zero motion), as officially.
    Flow is computed on grey frames de-normalised to 0..255 (ITU-R 601 weights, as OpenCV's).
    """

    def __init__(self, kind: Motion, *, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD):
        super().__init__()
        self.kind = kind
        self.channels = MOTIONS[kind]
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("grey", torch.tensor([0.299, 0.587, 0.114]).view(1, 1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, n = frames.shape[:2]
        nxt = torch.cat([frames[:, 1:], frames[:, -1:]], 1)  # (B, N, 3, h, w): the last paired with itself
        if self.kind == "diff":
            return nxt - frames
        if self.kind == "none":
            return frames[:, :, :0]
        frames, nxt = frames.float(), nxt.float()  # flow in fp32 even under autocast
        to_grey = lambda x: ((x * self.std + self.mean) * self.grey).sum(2, keepdim=True) * 255.0  # noqa: E731
        flow = lucas_kanade_flow(to_grey(frames).flatten(0, 1), to_grey(nxt).flatten(0, 1))  # (B*N, 2, h, w)
        return flow.view(b, n, 2, *flow.shape[-2:])


# --- transformers -------------------------------------------------------------------------------


class CausalBlock(nn.Module):
    """Pre-norm block with causal (lower-triangular) attention, bias-free qkv, GELU MLP (official TMT/fusion)."""

    def __init__(self, dim: int, *, num_heads: int, head_dim: int, mlp_dim: int, dropout: float = 0.0, scale: float):
        super().__init__()
        self.num_heads, self.head_dim, self.scale = num_heads, head_dim, scale
        inner = num_heads * head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) -> (B, N, D), and the last token's pre-softmax logits (B, heads, N)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, h, N, d) each
        # Explicit matmuls rather than SDPA: the tokens are few, the logits are needed, and every
        # MAC is counted on any device.
        dots = (q @ k.transpose(-1, -2)) * self.scale  # (B, h, N, N)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        attn = dots.masked_fill(~causal, float("-inf")).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)  # (B, N, h*d)
        x = x + self.proj(out)
        x = x + self.mlp(self.norm2(x))
        return x, dots[:, :, -1]


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """(num_positions, dim) sin/cos position table (Vaswani et al.)."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, -2.0 * (torch.arange(dim) // 2).double() / dim)[None]
    angles = pos * rate
    table = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return table.float()


class TemporalMotionTransformer(nn.Module):
    """TMT: small RGB + motion frames -> one token each, a CLS at the end, causal transformer.

    Args:
        in_chans: 3 + motion channels.
        frame_size_px: input side; the stem halves it and patchifies by `stem_patch_px`.
        stem_dim, stem_patch_px: the conv stem's last conv (768, 16 officially).
        dim, depth, num_heads, mlp_dim: the transformer (2048, 6, 16, 1024 for Base).
        dropout, emb_dropout: in blocks / after the embedding.
    """

    def __init__(
        self,
        *,
        in_chans: int,
        frame_size_px: int,
        stem_dim: int,
        stem_patch_px: int,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float = 0.0,
        emb_dropout: float = 0.0,
    ):
        super().__init__()
        if frame_size_px % 2 or (frame_size_px // 2) % stem_patch_px:
            raise ValueError(
                f"frame_size_px/2 must be a multiple of stem_patch_px; got frame_size_px={frame_size_px}, "
                f"stem_patch_px={stem_patch_px}"
            )
        grid = (frame_size_px // 2 // stem_patch_px) ** 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, padding=1),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.MaxPool2d(2),
            nn.Conv2d(16, stem_dim, stem_patch_px, stride=stem_patch_px, bias=False),
        )
        self.to_token = nn.Linear(stem_dim * grid, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.register_buffer("pos_table", sinusoid_table(_MAX_POSITIONS, dim), persistent=False)
        self.norm_pre = nn.LayerNorm(dim)
        self.drop = nn.Dropout(emb_dropout)
        self.blocks = nn.ModuleList(
            CausalBlock(dim, num_heads=num_heads, head_dim=dim // num_heads, mlp_dim=mlp_dim, dropout=dropout,
                        scale=TMT_SCALE_DIM**-0.5)
            for _ in range(depth)
        )
        # Officially an affine LayerNorm whose output only feeds the detached key predictor, so its
        # weights never train: the same function without parameters.
        self.norm_post = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, C, h, w) -> t_emb (B, D), tokens (B, N+1, D), CLS attention logits (B, heads, N)."""
        b, n = frames.shape[:2]
        if n + 1 > _MAX_POSITIONS:
            raise ValueError(f"the TMT takes at most {_MAX_POSITIONS - 1} frames, got {n}; raise skip_mo")
        x = self.stem(frames.flatten(0, 1))  # (B*N, stem_dim, g, g)
        x = self.to_token(x.flatten(1)).view(b, n, -1)  # (B, N, D): one token per frame
        x = torch.cat([x, self.cls_token.expand(b, -1, -1).to(x.dtype)], 1)  # (B, N+1, D): CLS last
        x = self.drop(self.norm_pre(x + self.pos_table[: n + 1].to(x.dtype)))
        for block in self.blocks:
            x, logits = block(x)
        return self.norm_post(x[:, -1]), x, logits[..., :-1]


class AttentionFusion(nn.Module):
    """[spatial tokens ; TMT tokens] -> LayerNorm -> causal blocks -> LayerNorm -> the last (TMT CLS) token."""

    def __init__(self, dim: int, *, depth: int, num_heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        head_dim = dim // num_heads  # 170 for D 2048, 12 heads: inner width 2040, as officially
        self.norm_pre = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(
            CausalBlock(dim, num_heads=num_heads, head_dim=head_dim, mlp_dim=mlp_dim, dropout=dropout,
                        scale=head_dim**-0.5)
            for _ in range(depth)
        )
        self.norm_post = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D)."""
        x = self.norm_pre(tokens)
        for block in self.blocks:
            x, _ = block(x)
        return self.norm_post(x)[:, -1]


class HSARHead(nn.Module):
    """Official head: max-pool 3 along the feature axis, Linear(D, 4D), ReLU, Linear(4D, K)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.pool = nn.MaxPool1d(3, stride=1, padding=1)
        self.fc = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x[:, None])[:, 0])  # (B, D) -> (B, K)


class HSAR(Method):
    """(B, T, C, H, W) -> (B, K): TMT over every skip_mo-th small frame, ViT on first/key/last frame, fusion.

    Args:
        spatial: frozen (by default) image encoder, (N, C, H, W) -> (N, S_D).
        temporal: the TMT.
        motion: `MotionInput`.
        fusion: `AttentionFusion`.
        head: (B, D) -> (B, K).
        num_frames: T; the key-frame predictor scores T positions.
        frame_size_px, skip_mo: TMT input size and frame step.
        freeze_spatial: keep the spatial encoder frozen and in eval mode.
        kf_weight, kf_loss_on_probs: key-frame loss weight; CE on softmaxed outputs as officially.
        dropout: in the key-frame predictor.
    """

    def __init__(
        self,
        *,
        spatial: nn.Module,
        temporal: TemporalMotionTransformer,
        motion: MotionInput,
        fusion: AttentionFusion,
        head: nn.Module,
        num_frames: int,
        frame_size_px: int,
        skip_mo: int,
        freeze_spatial: bool = True,
        kf_weight: float = 1.0,
        kf_loss_on_probs: bool = True,
        dropout: float = 0.1,
    ):
        super().__init__()
        if not 1 <= skip_mo <= num_frames:
            raise ValueError(f"skip_mo must be in [1, num_frames={num_frames}], got {skip_mo}")
        dim = temporal.to_token.out_features
        self.spatial = freeze(spatial) if freeze_spatial else spatial
        self.freeze_spatial = freeze_spatial
        self.spatial_to_dim = nn.Linear(spatial.num_features if spatial.num_classes == 0 else spatial.num_classes, dim)
        self.motion = motion
        self.temporal = temporal
        self.key_predictor = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(2 * dim, num_frames), nn.GELU(), nn.Dropout(dropout),
        )
        self.fusion = fusion
        self.head = head
        self.num_frames, self.frame_size_px, self.skip_mo = num_frames, frame_size_px, skip_mo
        self.kf_weight, self.kf_loss_on_probs = kf_weight, kf_loss_on_probs

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_spatial:
            self.spatial.eval()  # frozen, as officially: no dropout / drop-path in the ViT
        return self

    def _streams(self, clips: torch.Tensor) -> dict:
        b, t, c, h, w = clips.shape
        if t != self.num_frames:
            raise ValueError(
                f"expected clips of {self.num_frames} frames (B, T, C, H, W), got shape {tuple(clips.shape)}; "
                "build the workload with num_frames equal to the sampled clip length"
            )
        sub = clips[:, :: self.skip_mo]  # (B, N, C, H, W): the TMT's frames
        n = sub.shape[1]
        small = F.interpolate(
            sub.flatten(0, 1), size=(self.frame_size_px,) * 2, mode="bilinear", align_corners=False, antialias=True
        ).view(b, n, c, self.frame_size_px, self.frame_size_px)  # (B, N, C, s, s)
        motion = self.motion(small).to(small.dtype)  # (B, N, m, s, s)
        t_emb, tokens, cls_logits = self.temporal(torch.cat([small, motion], 2))  # (B, D), (B, N+1, D), (B, h, N)

        key_logits = self.key_predictor(t_emb.detach())  # (B, T): the key-frame loss trains only the predictor
        key_idx = key_logits.argmax(-1)  # (B,)
        first = torch.zeros_like(key_idx)
        picks = torch.stack([first, key_idx, first + (t - 1)], 1)  # (B, 3): first, key, last
        frames = clips[torch.arange(b, device=clips.device)[:, None], picks]  # (B, 3, C, H, W)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_spatial):
            s_emb = self.spatial(frames.flatten(0, 1)).view(b, NUM_SPATIAL_FRAMES, -1)  # (B, 3, S_D)
        fused = self.fusion(torch.cat([self.spatial_to_dim(s_emb), tokens], 1))  # (B, 3+N+1, D) -> (B, D)
        return {"logits": self.head(fused), "key_logits": key_logits, "key_idx": key_idx, "cls_logits": cls_logits}

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self._streams(clips)["logits"]

    def training_step(self, clips: torch.Tensor, labels: torch.Tensor) -> dict:
        out = self._streams(clips)
        logits = out["logits"]
        # Target: the TMT frame its CLS attends to most (head-averaged logits), as a clip position.
        target = out["cls_logits"].float().mean(1).argmax(-1) * self.skip_mo  # (B,)
        key_logits = out["key_logits"].float()
        loss_kf = F.cross_entropy(key_logits.softmax(-1) if self.kf_loss_on_probs else key_logits, target)
        loss_cls = F.cross_entropy(logits.float(), labels)
        return {
            "loss": loss_cls + self.kf_weight * loss_kf,
            "logits": logits,
            "loss_cls": loss_cls.detach(),
            "loss_kf": loss_kf.detach(),
            "key_frame": out["key_idx"].float().mean() / max(1, self.num_frames - 1),  # mean position in [0, 1]
            "key_agree": (out["key_idx"] == target).float().mean(),
        }


@register_workload(
    "hsar",
    params=HSARParams,
    sampling="clip",
    tiny_clip=TINY_CLIP,
    tiny={"spatial_backbone": "vit_tiny_patch16_224", "spatial_img_size_px": 32, "spatial_depth": 2, "dim": 32,
          "frame_size_px": 16, "skip_mo": 2, "stem_dim": 16, "stem_patch_px": 4, "depth": 1, "num_heads": 2,
          "mlp_dim": 32, "fusion_depth": 1, "fusion_heads": 2},
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)
def build_hsar(params: HSARParams, *, num_classes: int, num_frames: int) -> nn.Module:
    extra = {"depth": params.spatial_depth} if params.spatial_depth else {}
    if params.freeze_spatial and not params.pretrained:
        log.warning(
            "hsar: the spatial ViT is frozen at random initialisation; set pretrained to the iBOT "
            "checkpoint_teacher.pth, or to 'timm' (timm tag), or freeze_spatial: false"
        )
    spatial = create_vit(
        params.spatial_backbone,
        pretrained=params.pretrained,
        num_classes=0,
        img_size_px=params.spatial_img_size_px,
        **extra,
    )
    motion = MotionInput(params.motion)
    temporal = TemporalMotionTransformer(
        in_chans=3 + motion.channels,
        frame_size_px=params.frame_size_px,
        stem_dim=params.stem_dim,
        stem_patch_px=params.stem_patch_px,
        dim=params.dim,
        depth=params.depth,
        num_heads=params.num_heads,
        mlp_dim=params.mlp_dim,
        dropout=params.dropout,
        emb_dropout=params.emb_dropout,
    )
    fusion = AttentionFusion(
        params.dim, depth=params.fusion_depth, num_heads=params.fusion_heads, mlp_dim=params.mlp_dim,
        dropout=params.dropout,
    )
    return HSAR(
        spatial=spatial,
        temporal=temporal,
        motion=motion,
        fusion=fusion,
        head=HSARHead(params.dim, num_classes),
        num_frames=num_frames,
        frame_size_px=params.frame_size_px,
        skip_mo=params.skip_mo,
        freeze_spatial=params.freeze_spatial,
        kf_weight=params.kf_weight,
        kf_loss_on_probs=params.kf_loss_on_probs,
        dropout=params.dropout,
    )


def gmacs_by_stream(model: HSAR, clips: torch.Tensor) -> dict[str, float]:
    """GMACs of one eval forward on `clips`, split into spatial / motion / temporal / fusion / other.

    Runs wherever `model` and `clips` live (build both on `meta` to count full-size models for free).
    """
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(clips)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    parts = {name: sum(counts.get(f"{root}.{name}", {}).values()) / 2e9 for name in ("spatial", "motion", "temporal", "fusion")}
    parts["other"] = counter.get_total_flops() / 2e9 - sum(parts.values())
    parts["total"] = counter.get_total_flops() / 2e9
    return parts


def fusion_gmacs(model: HSAR, num_tokens: int) -> float:
    """GMACs of the fusion module alone on (1, num_tokens, D), e.g. the 69-token dummy that the
    authors' FLOP stub profiles (the reading behind the paper's 64.07 GFLOPs)."""
    norm = model.fusion.norm_pre
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.fusion(torch.zeros(1, num_tokens, *norm.normalized_shape, device=norm.weight.device, dtype=norm.weight.dtype))
    return counter.get_total_flops() / 2e9


# The official checkpoints (`HVG808/HSAR_repo`, an mmaction2 0.x overlay: {"meta", "state_dict":
# {"backbone.*", "cls_head.*"}}); its transformers are vit-pytorch's (`layers.N.0` attention, `.1` MLP).
_OFFICIAL_BLOCK = (
    (r"0\.norm\.(weight|bias)", "norm1.{}"),
    (r"0\.fn\.to_qkv\.weight", "qkv.weight"),
    (r"0\.fn\.to_out\.0\.(weight|bias)", "proj.0.{}"),
    (r"1\.norm\.(weight|bias)", "norm2.{}"),
    (r"1\.fn\.net\.(0|3)\.(weight|bias)", "mlp.{}.{}"),
)


def _drop_identity_ln_post(state: dict, model: nn.Module) -> dict:
    """The TMT's `ln_post` only feeds the key-frame predictor through a detached tensor, so it never
    trains: ours has no affine there. A checkpoint whose ln_post is not the identity cannot be represented."""
    out = dict(state)
    w, b = out.pop("#temporal.ln_post.weight", None), out.pop("#temporal.ln_post.bias", None)
    if (w is not None and w.device.type != "meta" and not torch.all(w == 1)) or (
            b is not None and b.device.type != "meta" and not torch.all(b == 0)):
        raise CheckpointError(
            "HSAR checkpoint: backbone.temporal_enc.ln_post has trained (non-identity) weights; the official "
            "training never updates them (detached input), so this checkpoint was not trained by the official code"
        )
    return out


checkpoint_filter_fn = CheckpointFilter(
    paper="HSAR (ACM ICMR 2023)",
    rules=(
        (r"backbone\.temporal_enc\.cls_token", r"temporal.cls_token"),
        (r"backbone\.temporal_enc\.pre_conv\.(\d)\.(weight|bias)", r"temporal.stem.\1.\2"),
        (r"backbone\.temporal_enc\.proj\.weight", None),  # built but unused: pre_conv is the stem
        (r"backbone\.temporal_enc\.position_enc\.pos_table", None),  # the fixed sinusoid table (recomputed)
        (r"backbone\.temporal_enc\.ln_pre\.(weight|bias)", r"temporal.norm_pre.\1"),
        (r"backbone\.temporal_enc\.ln_post\.(weight|bias)", r"#temporal.ln_post.\1"),
        (r"backbone\.temporal_enc\.to_embedding\.1\.(weight|bias)", r"temporal.to_token.\1"),
        *block_rules(r"backbone\.temporal_enc\.transformer\.layers", "temporal.blocks", _OFFICIAL_BLOCK),
        (r"backbone\.spatial_enc\.(.+)", r"spatial.\1"),
        (r"backbone\.pred_key\.(\d)\.(weight|bias)", r"key_predictor.\1.\2"),
        (r"backbone\.a_to_v\.0\.(weight|bias)", r"spatial_to_dim.\1"),
        (r"backbone\.fusion_cls", None),  # built but unused by the official forward
        (r"backbone\.fu_pre\.(weight|bias)", r"fusion.norm_pre.\1"),
        (r"backbone\.fu_post\.(weight|bias)", r"fusion.norm_post.\1"),
        *block_rules(r"backbone\.fusion\.layers", "fusion.blocks", _OFFICIAL_BLOCK),
        (r"cls_head\.fc_cls\.(0|2)\.(weight|bias)", r"head.fc.\1.\2"),
    ),
    hints=((r"^head\.fc\.2", "classes (--num-classes)"), (r"key_predictor\.3", "frames (--frames)"),
           (r"^(temporal|fusion)\.", "dim / depth / frame_size_px / skip_mo (--set; Large: dim=3072)"),
           (r"^spatial\.", "spatial_backbone (ViT-B/16 iBOT)")),
    prepare=_drop_identity_ln_post,
    signature=(r"temporal_enc\.transformer\.layers", r"backbone\.fu_pre\."),
)
