"""SLLM: Sample Less, Learn More (Cheng et al., ACM MM 2023, arXiv 2307.14866) on a Text4Vis CLIP ViT.

Of S sampled frames only K are encoded by the CLIP image encoder; a small bidirectional transformer
(FFRes) restores the dropped frames' features from their kept neighbours, trained against
stop-gradient encoder features of the real frames, so the temporal head still sees a full sequence.

Frames and restoration at any drop rate r (the official code hard-wires r = 0.5):
  K = round(S * (1 - r)) frames are kept, at positions floor(i * S / K), i = 0..K-1 (the first
  frame of each of K equal groups; r = 0.5 gives the official even positions 0, 2, .., S-2). Every
  position strictly between two kept frames is restored from that pair; positions after the last kept
  frame have no right neighbour and are neither encoded nor restored (position S-1 at r = 0.5, as in
  the official code). The head sees the kept + restored sequence of length kept[-1] + 1.
  When every gap holds at most one dropped frame (r <= 0.5), FFRes is the official one: the pair
  [e_left, e_right] and the reversed pair, both through the same 3-layer transformer, the mean of
  all output tokens. Wider gaps (r > 0.5) use an extension that is not in the paper: a third query
  token for the dropped frame at fraction a in (0, 1) of the gap, starting from the linear
  interpolation lerp(e_left, e_right, a) plus a learned lerp of a start and an end token, whose
  output is read out; the reversed pair uses 1 - a, and the two are averaged.
With `restore: false` (the naive baseline of the paper's ablation) nothing is restored: the head sees
only the K kept frames, in time order, and there is no FFRes and no restoration loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import QuickGELU
from timm.models.vision_transformer import Block
from torch import nn

from .layers.checkpoint import CheckpointError, CheckpointFilter, block_rules
from .layers.method import Method
from .layers.vit import create_vit, freeze
from .params import bounded
from .registry import register_workload

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_DROP_RATE = 0.75
CONTEXT_LENGTH = 77  # Text4Vis' frame position table: the CLIP text context length
RestoreLoss = Literal["kl", "cos", "mse"]
LAYER_NORM_EPS = 1e-12  # the header's and FFRes' LayerNorm (official `video_clip.LayerNorm`)

# Tiny CPU variant for the registry test: 8 frames at 32 px through a 2-block, 64-wide ViT.
TINY_CLIP = {"num_frames": 8, "size_px": 32}


@dataclass(frozen=True)
class SLLMParams:
    """Defaults: the official HMDB-51 config (S = 16 sampled, K = 8 encoded) on ViT-B/16 CLIP.

    The released configs say ViT-B/32 (`vit_base_patch32_clip_quickgelu_224.openai`); the README's
    checkpoint row names no backbone. OpenAI CLIP (and SLLM's own `clip/model.py`) uses QuickGELU: the
    `_quickgelu_` timm models equal it, the plain `vit_base_patch16_clip_224` ones (GELU) do not. Weights: `pretrained: timm` (timm's weights for the tag) or
    a path (a local timm or OpenAI-CLIP state dict); the default never reaches the network.
    """

    backbone: str = "vit_base_patch16_clip_quickgelu_224.openai"
    pretrained: str = ""  # "" | "timm" | a local file (workloads.layers.pretrained)
    img_size_px: int = 224  # the encoder's input size (position embeddings resized on load)
    embed_dim: int = 512  # CLIP image projection width (timm `head`); 0 = the pooled token, no projection
    backbone_depth: int = 0  # 0 = as named; fewer blocks only for tiny variants
    drop_rate: float = bounded(0.5, lo=0.0, hi=MAX_DROP_RATE)  # fraction of the S sampled frames that are never encoded, in [0, 0.75]
    restore: bool = True  # false = naive frame dropping: the head sees the K kept frames only
    restore_depth: int = 3
    restore_heads: int = 8
    header_depth: int = 6  # Text4Vis "Transf" video header; heads = embed width / 64
    res_loss: RestoreLoss = "kl"  # "kl" (official: KL over feature-softmaxes), "cos", "mse"
    res_loss_weight: float = 1.0
    text_embeddings_file: str = ""  # (K, D) class-name text embeddings (.npy/.safetensors/.pt); "" = linear head
    freeze_encoder: bool = False  # the official "shifter" stage: train FFRes + header on a trained encoder
    encoder_lr_scale: float = 0.1  # `clip_ratio`: encoder + logit scale lr multiplier, see `param_groups`


@dataclass(frozen=True)
class FrameLayout:
    """Which of S sampled frames are encoded and which are restored from which kept pair."""

    num_frames: int  # S
    kept: tuple[int, ...]  # positions encoded, increasing; kept[0] = 0
    restored: tuple[int, ...]  # positions restored, increasing
    left: tuple[int, ...]  # for each restored position: index into `kept` of its left neighbour
    frac: tuple[float, ...]  # its fraction of the way from the left to the right kept frame

    @property
    def length(self) -> int:
        """Length of the kept + restored sequence the head sees."""
        return self.kept[-1] + 1

    @property
    def max_gap(self) -> int:
        return max((b - a - 1 for a, b in zip(self.kept, self.kept[1:])), default=0)


def frame_layout(num_frames: int, drop_rate: float) -> FrameLayout:
    """The kept/restored layout for S = `num_frames` and `drop_rate` (see the module docstring)."""
    if not 0.0 <= drop_rate <= MAX_DROP_RATE:
        raise ValueError(f"drop_rate must be in [0, {MAX_DROP_RATE}], got {drop_rate}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    num_kept = min(num_frames, max(2, math.floor(num_frames * (1.0 - drop_rate) + 0.5)))
    kept = tuple(i * num_frames // num_kept for i in range(num_kept))
    restored, left, frac = [], [], []
    for i, (a, b) in enumerate(zip(kept, kept[1:])):
        for p in range(a + 1, b):
            restored.append(p)
            left.append(i)
            frac.append((p - a) / (b - a))
    return FrameLayout(num_frames, kept, tuple(restored), tuple(left), tuple(frac))


def _blocks(dim: int, depth: int, num_heads: int) -> nn.Sequential:
    # CLIP's residual attention block: pre-LN, biased qkv, 4x QuickGELU MLP; Text4Vis' TF-style
    # LayerNorm (`modules/video_clip.py`) has eps 1e-12.
    norm = partial(nn.LayerNorm, eps=LAYER_NORM_EPS)
    return nn.Sequential(
        *[Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True, act_layer=QuickGELU, norm_layer=norm)
          for _ in range(depth)]
    )


class FrameRestorer(nn.Module):
    """FFRes: a dropped frame's feature from its two kept neighbours, order-symmetrised.

    Args:
        dim: feature width D (the official code hard-codes 512).
        depth, num_heads: of the transformer (official 3, 8).
        use_query: the gap-fraction query token (the r > 0.5 extension); False = the official
            2-token pair mean.
    """

    def __init__(self, dim: int, *, depth: int = 3, num_heads: int = 8, use_query: bool = False):
        super().__init__()
        self.use_query = use_query
        num_tokens = 3 if use_query else 2
        self.pos_embed = nn.Parameter(torch.empty(num_tokens, dim).normal_(std=0.02))
        if use_query:
            self.query_start = nn.Parameter(torch.empty(dim).normal_(std=0.02))
            self.query_end = nn.Parameter(torch.empty(dim).normal_(std=0.02))
        self.blocks = _blocks(dim, depth, num_heads)

    def forward(self, left: torch.Tensor, right: torch.Tensor, frac: torch.Tensor | None = None) -> torch.Tensor:
        """left, right: (N, D) kept features; frac: (N,) in (0, 1), only with `use_query`. -> (N, D)."""
        n = left.shape[0]
        pairs = torch.cat([torch.stack([left, right], 1), torch.stack([right, left], 1)])  # (2N, 2, D): both orders
        if self.use_query:
            a = torch.cat([frac, 1.0 - frac])[:, None].to(left.dtype)  # (2N, 1): the reversed pair sees 1 - a
            # The query starts at the linear interpolation of the pair, so the blocks learn a correction.
            query = torch.lerp(pairs[:, 0], pairs[:, 1], a) + torch.lerp(self.query_start, self.query_end, a)  # (2N, D)
            pairs = torch.cat([pairs, query[:, None]], 1)  # (2N, 3, D)
        out = self.blocks(pairs + self.pos_embed)  # (2N, tokens, D)
        out = out[:, 2] if self.use_query else out.mean(1)  # (2N, D)
        return 0.5 * (out[:n] + out[n:])  # (N, D): mean of the two orders


class VideoHeader(nn.Module):
    """Text4Vis "Transf": frame position embeddings, a transformer, a residual, the mean over time."""

    def __init__(self, dim: int, *, depth: int = 6, context_length: int = CONTEXT_LENGTH):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(context_length, dim))
        self.blocks = _blocks(dim, depth, max(1, dim // 64))
        self.apply(self._init)
        nn.init.normal_(self.pos_embed, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, L, D) frame features -> (B, D) video feature."""
        x = self.blocks(feats + self.pos_embed[: feats.shape[1]])  # (B, L, D)
        return (x + feats).mean(1)  # (B, D): residual from the input, average over time


class TextClassifier(nn.Module):
    """exp(logit_scale) * cos(video, class text embedding); the text embeddings stay fixed (Text4Vis)."""

    def __init__(self, text_embeddings: torch.Tensor, *, logit_scale: float = math.log(100.0)):
        super().__init__()
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.float(), dim=-1))  # (K, D)
        # CLIP's trained temperature (exp = 100); Text4Vis trains it at the encoder's lr.
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, K)."""
        return self.logit_scale.exp() * F.normalize(video, dim=-1) @ self.text_embeddings.to(video.dtype).t()


def load_text_embeddings(path: str | Path, *, num_classes: int, dim: int) -> torch.Tensor:
    """(K, D) class-name text embeddings from .npy, .safetensors (one tensor) or .pt/.pth.

    Compute them once with the CLIP text tower matching the image encoder (Text4Vis prompts:
    "<class name>, <description>"), in class-index order of the dataset's class list.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text embeddings file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        import numpy as np

        emb = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path), device="cpu")
        if len(tensors) != 1:
            raise ValueError(f"{str(path)!r} must hold exactly one (K, D) tensor; found {sorted(tensors)}")
        emb = next(iter(tensors.values()))
    else:
        emb = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(emb, torch.Tensor) or tuple(emb.shape) != (num_classes, dim):
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(
            f"text embeddings {str(path)!r} have shape {shape}; expected ({num_classes}, {dim}) = "
            "(classes in the dataset's class list, the encoder's embed_dim)"
        )
    return emb.float()


class SLLM(Method):
    """(B, S, C, H, W) -> (B, K): encode the kept frames, restore the rest, temporal head, classifier.

    `forward` also accepts the K kept frames alone (B, K, C, H, W), so a loader that decodes only
    `layout.kept` saves the decode too.

    Args:
        encoder: (N, C, H, W) -> (N, D) frame embeddings.
        classifier: (B, D) -> (B, num_classes).
        layout: `frame_layout(S, drop_rate)`.
        dim: D.
        restore: restore the dropped frames (False = naive dropping, the head sees the kept frames only).
        restore_depth, restore_heads: FFRes size.
        header_depth: video header depth.
        res_loss, res_loss_weight: restoration loss ("kl" official) and its weight.
        freeze_encoder: no gradients into the encoder (the two-stage "shifter" recipe).
        encoder_lr_scale: lr multiplier of the encoder and the logit scale, for `param_groups`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        classifier: nn.Module,
        *,
        layout: FrameLayout,
        dim: int,
        restore: bool = True,
        restore_depth: int = 3,
        restore_heads: int = 8,
        header_depth: int = 6,
        res_loss: RestoreLoss = "kl",
        res_loss_weight: float = 1.0,
        freeze_encoder: bool = False,
        encoder_lr_scale: float = 0.1,
    ):
        super().__init__()
        if layout.num_frames > CONTEXT_LENGTH:
            raise ValueError(f"at most {CONTEXT_LENGTH} sampled frames (the header's position table), got {layout.num_frames}")
        self.encoder = freeze(encoder) if freeze_encoder else encoder
        self.freeze_encoder = freeze_encoder
        self.classifier = classifier
        self.layout = layout
        self.res_loss = res_loss
        self.res_loss_weight = res_loss_weight
        self.encoder_lr_scale = encoder_lr_scale
        self.restorer = (
            FrameRestorer(dim, depth=restore_depth, num_heads=restore_heads, use_query=layout.max_gap > 1)
            if restore and layout.restored
            else None
        )
        self.header = VideoHeader(dim, depth=header_depth)
        # Index buffers (not persistent: they follow from num_frames and drop_rate).
        self.register_buffer("kept_idx", torch.tensor(layout.kept), persistent=False)
        self.register_buffer("restored_idx", torch.tensor(layout.restored, dtype=torch.long), persistent=False)
        self.register_buffer("left_idx", torch.tensor(layout.left, dtype=torch.long), persistent=False)
        self.register_buffer("frac", torch.tensor(layout.frac, dtype=torch.float32), persistent=False)
        # cat([kept, restored])[order] is the sequence in time order.
        positions = list(layout.kept) + (list(layout.restored) if self.restorer is not None else [])
        order = sorted(range(len(positions)), key=positions.__getitem__)
        self.register_buffer("order", torch.tensor(order), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N, C, H, W) -> (B, N, D); only the frames given are encoded."""
        b, n = frames.shape[:2]
        feats = self.encoder(frames.flatten(0, 1))  # (B*N, D): time is the fast index
        return feats.view(b, n, -1)

    def restore(self, kept: torch.Tensor) -> torch.Tensor:
        """(B, K, D) kept features -> (B, R, D) restored features, R = len(layout.restored)."""
        b, _, d = kept.shape
        left = kept[:, self.left_idx]  # (B, R, D)
        right = kept[:, self.left_idx + 1]  # (B, R, D)
        frac = self.frac.expand(b, -1).reshape(-1) if self.restorer.use_query else None
        return self.restorer(left.reshape(-1, d), right.reshape(-1, d), frac).view(b, -1, d)

    def _select_kept(self, clips: torch.Tensor) -> torch.Tensor:
        t = clips.shape[1]
        if t == self.layout.num_frames:
            return clips[:, self.kept_idx]  # (B, K, C, H, W): dropped frames are never encoded
        if t == len(self.layout.kept):
            return clips
        raise ValueError(
            f"expected clips of {self.layout.num_frames} sampled frames (or the {len(self.layout.kept)} kept ones) "
            f"as (B, T, C, H, W), got shape {tuple(clips.shape)}; build the workload with num_frames equal "
            "to the sampled clip length"
        )

    def _head(self, kept: torch.Tensor, restored: torch.Tensor | None) -> torch.Tensor:
        seq = kept if restored is None else torch.cat([kept, restored], 1)[:, self.order]  # (B, L, D) in time order
        return self.classifier(self.header(seq))  # (B, K)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        kept = self.encode(self._select_kept(clips))  # (B, K, D)
        restored = self.restore(kept) if self.restorer is not None else None  # (B, R, D)
        return self._head(kept, restored)

    def restoration_loss(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, R, D) restored vs (B, R, D) stop-gradient targets -> scalar."""
        r, t = restored.flatten(0, 1).float(), target.flatten(0, 1).float()  # (B*R, D)
        if self.res_loss == "kl":
            # KL(softmax(target) || softmax(restored)), a softmax over feature dimensions, batchmean.
            return F.kl_div(F.log_softmax(r, -1), F.softmax(t, -1), reduction="batchmean")
        if self.res_loss == "cos":
            return (1.0 - F.cosine_similarity(r, t, dim=-1)).mean()
        return F.mse_loss(F.normalize(r, dim=-1), F.normalize(t, dim=-1))

    def training_step(self, clips: torch.Tensor, labels: torch.Tensor) -> dict:
        if clips.shape[1] != self.layout.num_frames:
            raise ValueError(
                f"training needs all {self.layout.num_frames} sampled frames (the dropped ones are the "
                f"restoration targets), got shape {tuple(clips.shape)}"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            kept = self.encode(clips[:, self.kept_idx])  # (B, K, D)
        out = {}
        restored = None
        loss_res = torch.zeros((), device=clips.device)
        if self.restorer is not None:
            restored = self.restore(kept)  # (B, R, D)
            with torch.no_grad():  # stop-gradient targets through the same encoder
                target = self.encode(clips[:, self.restored_idx])  # (B, R, D)
            loss_res = self.restoration_loss(restored, target)
            out["restore_cos"] = F.cosine_similarity(restored.detach().float(), target.float(), dim=-1).mean()
        logits = self._head(kept, restored)
        loss_ce = F.cross_entropy(logits.float(), labels)
        out.update(
            loss=loss_ce + self.res_loss_weight * loss_res,
            logits=logits,
            loss_ce=loss_ce.detach(),
            loss_res=loss_res.detach(),
            encoded_frames=torch.tensor(float(len(self.layout.kept))),
        )
        return out

    def param_groups(self) -> list[dict]:
        """Optimizer groups: the encoder and the logit scale at lr * `encoder_lr_scale` (official
        `clip_ratio`), FFRes, header and any linear head at lr. Each dict has "params" and "lr_scale"."""
        slow = [p for p in self.encoder.parameters() if p.requires_grad]
        scale = getattr(self.classifier, "logit_scale", None)
        if scale is not None and scale.requires_grad:
            slow.append(scale)
        slow_ids = {id(p) for p in slow}
        fast = [p for p in self.parameters() if p.requires_grad and id(p) not in slow_ids]
        return [{"params": slow, "lr_scale": self.encoder_lr_scale}, {"params": fast, "lr_scale": 1.0}]


@register_workload(
    "sllm",
    params=SLLMParams,
    sampling="segments",
    tiny_clip=TINY_CLIP,
    tiny={"backbone": "vit_tiny_patch16_224", "img_size_px": 32, "embed_dim": 0, "backbone_depth": 2,
          "restore_depth": 1, "restore_heads": 2, "header_depth": 1},
    mean=CLIP_MEAN,
    std=CLIP_STD,
)
def build_sllm(params: SLLMParams, *, num_classes: int, num_frames: int) -> nn.Module:
    layout = frame_layout(num_frames, params.drop_rate)
    extra = {"depth": params.backbone_depth} if params.backbone_depth else {}
    encoder = create_vit(
        params.backbone,
        pretrained=params.pretrained,
        num_classes=params.embed_dim,
        img_size_px=params.img_size_px,
        **extra,
    )
    dim = params.embed_dim or encoder.num_features
    if params.text_embeddings_file:
        text = load_text_embeddings(params.text_embeddings_file, num_classes=num_classes, dim=dim)
        classifier: nn.Module = TextClassifier(text)
    else:
        classifier = nn.Linear(dim, num_classes)  # deviation: no text tower offline (labelled in the docs)
    return SLLM(
        encoder,
        classifier,
        layout=layout,
        dim=dim,
        restore=params.restore,
        restore_depth=params.restore_depth,
        restore_heads=params.restore_heads,
        header_depth=params.header_depth,
        res_loss=params.res_loss,
        res_loss_weight=params.res_loss_weight,
        freeze_encoder=params.freeze_encoder,
        encoder_lr_scale=params.encoder_lr_scale,
    )


def forward_clips_per_s(
    model: nn.Module, clip_shape: tuple, *, iters: int = 10, warmup: int = 2, device: str | torch.device = "cpu"
) -> float:
    """Measured eval-mode forward throughput (clips/s) of `model` on random clips of `clip_shape`.

    Model-only (no decoding); the model's mode is restored afterwards. On CUDA the timing is
    synchronised. Use one model per drop rate: `build_sllm` at each rate.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    clips = torch.randn(clip_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(clips)
            sync()
            start = time.perf_counter()
            for _ in range(iters):
                model(clips)
            sync()
            elapsed = time.perf_counter() - start
    finally:
        model.train(was_training)
    return clip_shape[0] * iters / elapsed


# The official checkpoints (`{"model_state_dict": VideoCLIP's state}` in CLIP names): CLIP-style residual
# attention blocks (the image encoder, Text4Vis' header, FFRes) -> timm `Block`.
_CLIP_BLOCK = (
    (r"ln_1\.(weight|bias)", r"norm1.{}"),
    (r"ln_2\.(weight|bias)", r"norm2.{}"),
    (r"attn\.in_proj_(weight|bias)", r"attn.qkv.{}"),
    (r"attn\.out_proj\.(weight|bias)", r"attn.proj.{}"),
    (r"mlp\.c_fc\.(weight|bias)", r"mlp.fc1.{}"),
    (r"mlp\.c_proj\.(weight|bias)", r"mlp.fc2.{}"),
)


def _clip_to_timm(state: dict, model: nn.Module) -> dict:
    """CLIP visual layout -> timm's (class token, position table, transposed projection); FFRes keeps the
    first rows of the official 77-row position table (only 2 are ever used); the class text embeddings
    come from `text_embeddings_file` (the checkpoint holds the image side only)."""
    own = model.state_dict()
    out = dict(state)
    if "encoder.cls_token" in out:
        out["encoder.cls_token"] = out["encoder.cls_token"].reshape(1, 1, -1)
    if "encoder.pos_embed" in out and out["encoder.pos_embed"].dim() == 2:
        out["encoder.pos_embed"] = out["encoder.pos_embed"].unsqueeze(0)
    if "encoder.head.weight" in out:
        out["encoder.head.weight"] = out["encoder.head.weight"].t()
        out["encoder.head.bias"] = torch.zeros(out["encoder.head.weight"].shape[0])
    table = out.get("restorer.pos_embed")
    if table is not None and "restorer.pos_embed" in own and table.shape[0] > own["restorer.pos_embed"].shape[0]:
        out["restorer.pos_embed"] = table[: own["restorer.pos_embed"].shape[0]]
    if "classifier.text_embeddings" in own:
        out["classifier.text_embeddings"] = own["classifier.text_embeddings"]
    elif "classifier.logit_scale" in out:
        raise CheckpointError(
            "SLLM checkpoints classify by cosine similarity to the CLIP text embeddings of the class names, "
            "which the checkpoint does not hold (Text4Vis computes them at start-up with the CLIP text tower): "
            "pass --set text_embeddings_file=FILE with the (classes, 512) embeddings of your class list"
        )
    return out


checkpoint_filter_fn = CheckpointFilter(
    paper="SLLM (ACM MM 2023)",
    rules=(
        (r"visual\.conv1\.weight", r"encoder.patch_embed.proj.weight"),
        (r"visual\.class_embedding", r"encoder.cls_token"),
        (r"visual\.positional_embedding", r"encoder.pos_embed"),
        (r"visual\.ln_pre\.(weight|bias)", r"encoder.norm_pre.\1"),
        (r"visual\.ln_post\.(weight|bias)", r"encoder.norm.\1"),
        (r"visual\.proj", r"encoder.head.weight"),
        *block_rules(r"visual\.transformer\.resblocks", "encoder.blocks", _CLIP_BLOCK),
        (r"fusion_model\.frame_position_embeddings\.weight", r"header.pos_embed"),
        *block_rules(r"fusion_model\.transformer\.resblocks", "header.blocks", _CLIP_BLOCK),
        (r"restore_frame_position_embeddings\.weight", r"restorer.pos_embed"),
        *block_rules(r"restore_model\.resblocks", "restorer.blocks", _CLIP_BLOCK),
        (r"logit_scale", r"classifier.logit_scale"),
    ),
    hints=((r"^encoder\.pos_embed", "img_size_px / backbone patch size (--set)"),
           (r"^encoder\.", "backbone (ViT-B/16 vs B/32: --set backbone=...)"),
           (r"^restorer\.", "drop_rate / restore (--set)"),
           (r"^header\.blocks", "header_depth (--set)"),
           (r"^classifier\.", "classes (--num-classes, text_embeddings_file)")),
    prepare=_clip_to_timm,
    signature=(r"restore_model\.resblocks\.", r"fusion_model\.frame_position_embeddings"),
)
