"""SV-Mix: Selective Volume Mixup (Tan, Qiu, Hao, Yao, Mei; arXiv 2309.09534), after the official code.

A training-only, learned mixup around any registered backbone: a lambda-conditioned attention module
turns the last-stage features of two clips into a soft per-patch (spatial) or per-frame (temporal)
blend mask, labels use a saliency-corrected ratio, and the module is trained through an EMA copy of
the classifier on a second, independent mix; the EMA copy is the model evaluated (online is logged too).

Per step (S-SV `maskmotioncut.py`, `engine/defaults.py`, `engine/train_loop.py`):
  1. F = ema.features(x) (no grad); spatial mode with prob `switch_prob`, else temporal;
     lambda ~ Beta(alpha_spatial | alpha_temporal) with prob `mix_prob` (else 1); lambda' ~ Beta(alpha_spatial).
  2. task branch (trains the online net): detached masks from (F, lambda, perm); plain mixup when lambda
     is outside [0.08, 0.92]; target weight lambda_sal from the EMA features' saliency.
  3. policy branch (trains the selection module): masks from (F, lambda', perm') with grad, through the
     frozen EMA net into its input; + a margin loss that keeps the mean share of clip A near lambda'.
  4. own SGD on the selection module, then the EMA update of parameters (not buffers).
`method` also gives plain baselines with the same EMA bookkeeping: mixup, cutmix (one box on all
frames), mixup_cutmix (switched by `switch_prob`), none. Their EMA never runs forward in training,
so it also averages the online model's BN statistics (buffers).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.optim.sgd import sgd as sgd_update

from .layers import Method, SegmentClassifier
from .params import bounded
from .registry import InputFormat, get_workload, register_workload


@dataclass(frozen=True)
class SVMixParams:
    """Defaults: the official TSM / Something-Something configuration (knob names as reference §2(b))."""

    backbone_workload: str = "tsm"  # any registered workload with a feature split (2D segment, 3D nets, mvitv2, uniformer)
    # That workload's Params, every value set; a mapping of its overrides (or None: its defaults) is
    # resolved once, on construction (see `__post_init__`).
    backbone_params: Any = None
    method: Literal["svmix", "mixup", "cutmix", "mixup_cutmix", "none"] = "svmix"  # the baselines keep the EMA too
    alpha_temporal: float = 0.8  # Beta(a, a) for lambda in temporal (frame) mode; mixup's alpha
    alpha_spatial: float = 1.0  # Beta(a, a) for spatial (patch) mode and for the policy branch's lambda'
    mix_prob: float = bounded(1.0, lo=0.0, hi=1.0)  # probability that a batch is mixed at all
    switch_prob: float = bounded(0.5, lo=0.0, hi=1.0)  # probability of the spatial mode (cutmix for the baselines), per batch
    label_smoothing: float = 0.1  # inside the mixed targets
    fixed_lambda: float = 0.0  # > 0: this lambda for every mixed batch (ratio ablation); 0: sample Beta
    extreme_cutoff: float = 0.08  # lambda outside [c, 1 - c]: constant masks (plain mixup)
    ratio_margin: float = 0.1  # |mean share of A - lambda'| allowed without penalty
    ratio_weight: float = 0.1
    ema_momentum: float = bounded(0.999, lo=0.0, hi=1.0)  # ema <- m * ema + (1 - m) * online, parameters only, after every step
    ema_init: Literal["separate", "copy"] = "separate"  # "separate": own build (official: own random head); "copy": of online
    query_dim: int = 0  # selection module's query width; 0 = channels // 2 for CNNs (1024 for ResNet-50), channels for transformers
    block_lr: float = 0.05  # the selection module's SGD (0.05 Sth TSM, 0.04 D48/EGTEA, 0.02 transformers)
    block_momentum: float = 0.9
    block_weight_decay: float = 1e-4
    block_grad_clip: float = 20.0
    block_lr_schedule: Literal["step", "cosine", "constant"] = "step"  # per epoch; match the recipe's schedule
    block_lr_steps: tuple = (0.45, 0.91)  # step: x0.1 at these fractions of the epochs (25, 50 of 55)

    def __post_init__(self):
        # The wrapped workload's Params are resolved here, once, whichever way this instance is made (a
        # recipe, `dataclasses.replace`, a recorded meta.json): builds and input formats then use them
        # as they are, and `dataclasses.asdict` records every value of the whole network.
        if self.backbone_workload == "svmix":
            raise ValueError("svmix: backbone_workload must be a plain classifier (tsm, tsn, tam, r2plus1d, ...)")
        try:
            spec = get_workload(self.backbone_workload)
        except KeyError as err:
            raise ValueError(f"svmix: backbone_workload: {err.args[0]}") from None
        inner = self.backbone_params
        if dataclasses.is_dataclass(inner) and not isinstance(inner, spec.params_cls):
            raise ValueError(
                f"svmix: backbone_params is a {type(inner).__name__}, but backbone_workload "
                f"'{self.backbone_workload}' takes {spec.params_cls.__name__}; give a mapping of its overrides"
            )
        object.__setattr__(self, "backbone_params", spec.resolve_params(inner, path="backbone_params"))


def clip_features(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """Last-stage feature map of a video workload: (B, T, C, H, W) -> (B, D, T', h, w), before pooling.

    2D segment models (TSN/TSM/TAM: `SegmentClassifier` over a timm backbone) run the backbone's
    `forward_features` per frame; 3D models and video transformers (mvitv2, uniformer) expose
    `forward_features` themselves.
    """
    if isinstance(model, SegmentClassifier):
        b = clips.shape[0]
        feats = model.backbone.forward_features(clips.flatten(0, 1))  # (B*T', D, h, w)
        return feats.view(b, -1, *feats.shape[1:]).transpose(1, 2)  # (B, D, T', h, w)
    if hasattr(model, "forward_features"):
        feats = model.forward_features(clips)
        if feats.dim() == 5:
            return feats  # (B, D, T', h, w)
    raise TypeError(
        f"svmix: cannot take a feature map from {type(model).__name__}; the backbone workload must be a "
        "SegmentClassifier (tsn, tsm, tam) or expose forward_features(clips) -> (B, D, T', h, w) (3D nets, mvitv2, uniformer)"
    )


class SelectionModule(nn.Module):
    """The lambda-conditioned attention (`MB_st`) that writes the partner's soft blend weight m_B.

    Tokens of clip A carry an extra channel (lambda - 0.5), tokens of its partner -(lambda - 0.5);
    queries and keys share one projection, values are one scalar per partner token. The value weight on
    the lambda channel starts at 4 (bias 0), so at init m_B ~ sigmoid(-4 (lambda - 0.5)): close to
    plain mixup with a slightly compressed ratio.
    """

    def __init__(self, channels: int, *, query_dim: int):
        super().__init__()
        self.query = nn.Linear(channels + 1, query_dim)
        self.value = nn.Linear(channels + 1, 1)
        with torch.no_grad():
            self.value.weight[:, -1] = 4.0
            self.value.bias.zero_()

    def forward(self, feats: torch.Tensor, lam: float, perm: torch.Tensor, *, spatial: bool) -> torch.Tensor:
        """feats (B, D, T', h, w), partner index `perm` (B,) -> m_B on the feature grid (B, T', h, w)."""
        b, d, tf, h, w = feats.shape
        if spatial:
            tokens = feats.permute(0, 2, 3, 4, 1).reshape(b, tf, h * w, d)  # (B, T', h*w, D): cells per frame
        else:
            tokens = feats.mean((3, 4)).transpose(1, 2).unsqueeze(1)  # (B, 1, T', D): frames of a clip
        shift = torch.full_like(tokens[..., :1], lam - 0.5)
        own = torch.cat([tokens, shift], -1)  # (B, G, N, D+1)
        partner = torch.cat([tokens[perm], -shift], -1)
        q, k, v = self.query(own), self.query(partner), self.value(partner)  # (B, G, N, Cq) x2, (B, G, N, 1)
        z = F.scaled_dot_product_attention(q, k, v)  # (B, G, N, 1): softmax(q k^T / sqrt(Cq)) v
        m_b = torch.sigmoid(z)
        if spatial:
            return m_b.view(b, tf, h, w)
        return m_b.view(b, tf, 1, 1).expand(b, tf, h, w)


def selection_module_from_official(checkpoint: dict) -> SelectionModule:
    """The official `MB_st` as a SelectionModule: from its trainer's checkpoint (`PtCheckpointer` saves the
    module as `mix_bloc_s`, beside `model` and `model_ofl`) or from the module's own state dict.

    The official names and layout are ours (one `query` projection for queries and keys, a scalar
    `value`, the lambda channel last), so converting is picking the state and dropping DDP's `module.`.
    """
    state = checkpoint.get("mix_bloc_s", checkpoint)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = ["query.bias", "query.weight", "value.bias", "value.weight"]
    if sorted(state) != expected:
        raise ValueError(
            f"svmix: the official selection module (MB_st) holds {expected}, got {sorted(state)[:8]}; pass the "
            "SV-Mix trainer's checkpoint (it keeps the module under 'mix_bloc_s') or MB_st's own state dict"
        )
    query_dim, channels = state["query.weight"].shape[0], state["query.weight"].shape[1] - 1
    module = SelectionModule(channels, query_dim=query_dim)
    module.load_state_dict(state)
    return module


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return out.scatter_(1, labels[:, None], 1.0 - smoothing + off)  # (B, K)


def soft_target_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def mask_to_clip(grid: torch.Tensor, clip_shape: torch.Size) -> torch.Tensor:
    """(B, T', h, w) grid -> (B, T, 1, H, W): nearest upsampling (32-px blocks at 224 / 7; T/T' repeats)."""
    t, _, hh, ww = clip_shape[1:]
    up = F.interpolate(grid[:, None], size=(t, hh, ww), mode="nearest")  # (B, 1, T, H, W)
    return up.transpose(1, 2)  # (B, T, 1, H, W)


def mix_clips(clips: torch.Tensor, w_b: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """m_A x + m_B x[perm], frame-aligned: clips (B, T, C, H, W), the partner's weight w_b (B, T, 1, H, W)."""
    return clips + w_b.to(clips.dtype) * (clips[perm] - clips)


def saliency_ratio(feats: torch.Tensor, share_a: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """lambda_sal (B,): A's saliency kept over the total kept, on the feature grid.

    feats (B, D, T', h, w); share_a (B, T', h, w) = m_A on the grid. The saliency of a clip is the
    softmax over all its cells of the channel-mean feature.
    """
    sal = F.softmax(feats.float().mean(1).flatten(1), dim=1)  # (B, T'*h*w)
    share = share_a.flatten(1)
    r_a = (sal * share).sum(1)
    r_b = (sal[perm] * (1.0 - share)).sum(1)
    return r_a / (r_a + r_b).clamp_min(1e-12)


class SVMix(Method):
    """Online classifier + EMA classifier + selection module; `forward` is the EMA model (what is evaluated)."""

    def __init__(
        self,
        online: nn.Module,
        ema: nn.Module,
        *,
        num_classes: int,
        method: str = "svmix",
        alpha_temporal: float = 0.8,
        alpha_spatial: float = 1.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        fixed_lambda: float = 0.0,
        extreme_cutoff: float = 0.08,
        ratio_margin: float = 0.1,
        ratio_weight: float = 0.1,
        ema_momentum: float = 0.999,
        query_dim: int = 0,
        feature_channels: int | None = None,
        block_lr: float = 0.05,
        block_momentum: float = 0.9,
        block_weight_decay: float = 1e-4,
        block_grad_clip: float = 20.0,
        block_lr_schedule: str = "step",
        block_lr_steps: tuple = (0.45, 0.91),
    ):
        super().__init__()
        self.online = online
        self.ema = ema
        for p in self.ema.parameters():
            p.requires_grad_(False)  # moved only by the EMA update
        self.num_classes = num_classes
        self.method = method
        self.alpha_temporal, self.alpha_spatial = alpha_temporal, alpha_spatial
        self.mix_prob, self.switch_prob = mix_prob, switch_prob
        self.label_smoothing = label_smoothing
        self.fixed_lambda = fixed_lambda
        self.extreme_cutoff = extreme_cutoff
        self.ratio_margin, self.ratio_weight = ratio_margin, ratio_weight
        self.ema_momentum = ema_momentum
        self.block_lr, self.block_momentum = block_lr, block_momentum
        self.block_weight_decay, self.block_grad_clip = block_weight_decay, block_grad_clip
        self.block_lr_schedule, self.block_lr_steps = block_lr_schedule, tuple(block_lr_steps)
        self.block_lr_factor = 1.0
        self.selector = None
        if method == "svmix":
            self.selector = SelectionModule(feature_channels, query_dim=query_dim or feature_channels // 2)
            # The module has its own optimiser (SGD, its own lr), stepped in `on_step_end`: its parameters
            # do not require grad, so the platform's optimiser and DDP leave them alone; its gradient is
            # taken explicitly in `training_step`. The momentum lives in buffers so checkpoints carry it.
            for name, p in self.selector.named_parameters():
                p.requires_grad_(False)
                self.selector.register_buffer(f"momentum_{name.replace('.', '_')}", torch.zeros_like(p))
        self._pending_grads: list[torch.Tensor] | None = None
        self._set_ema_regularisers_eval()

    # -- modes ---------------------------------------------------------------------------------------

    def _set_ema_regularisers_eval(self) -> None:
        # Official: the EMA net's dropout / drop-path are off, its BN stays in train mode.
        for m in self.ema.modules():
            if isinstance(m, (nn.modules.dropout._DropoutNd, DropPath)):
                m.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self._set_ema_regularisers_eval()
        return self

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.ema(clips)  # (B, K): the EMA model is what SV-Mix evaluates and deploys

    def eval_variants(self) -> dict[str, nn.Module]:
        return {"ema": self.ema, "online": self.online}

    # -- sampling ------------------------------------------------------------------------------------

    def _beta(self, alpha: float, *, allow_fixed: bool = True) -> float:
        if allow_fixed and self.fixed_lambda > 0:
            return self.fixed_lambda
        if alpha <= 0:
            return 1.0
        return float(torch.distributions.Beta(alpha, alpha).sample())

    def _targets(self, labels, perm, weight_a) -> torch.Tensor:
        y = smooth_one_hot(labels, self.num_classes, self.label_smoothing)  # (B, K)
        weight_a = torch.as_tensor(weight_a, dtype=y.dtype, device=y.device).reshape(-1, 1)
        return weight_a * y + (1.0 - weight_a) * y[perm]

    # -- training ------------------------------------------------------------------------------------

    def training_step(self, clips: torch.Tensor, labels: torch.Tensor) -> dict:
        if self.method == "svmix":
            return self._svmix_step(clips, labels)
        return self._baseline_step(clips, labels)

    def _baseline_step(self, clips, labels) -> dict:
        b, _, _, hh, ww = clips.shape
        perm = torch.randperm(b, device=clips.device)
        spatial = {"mixup": False, "cutmix": True}.get(self.method, bool(torch.rand(()) < self.switch_prob))
        lam = 1.0
        if self.method != "none" and bool(torch.rand(()) < self.mix_prob):
            lam = self._beta(self.alpha_spatial if spatial else self.alpha_temporal)
        if lam >= 1.0:
            mixed = clips
        elif spatial:
            # CutMix with one box on every frame; lambda corrected to the box area actually pasted.
            # (timm's Mixup needs even batches and NumPy's RNG; the loop seeds torch and can end odd.)
            cut_h, cut_w = int(hh * math.sqrt(1.0 - lam)), int(ww * math.sqrt(1.0 - lam))
            cy, cx = int(torch.randint(hh, ())), int(torch.randint(ww, ()))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, hh)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, ww)
            mixed = clips.clone()
            mixed[..., y0:y1, x0:x1] = clips[perm][..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (hh * ww)
        else:
            mixed = torch.lerp(clips[perm], clips, lam)  # lam * x + (1 - lam) * x[perm], every frame
        logits = self.online(mixed)
        loss = soft_target_ce(logits, self._targets(labels, perm, lam))
        return {
            "loss": loss,
            "logits": logits,
            "mix_lambda": torch.tensor(lam),
            "spatial": torch.tensor(float(spatial)),
        }

    def _svmix_step(self, clips, labels) -> dict:
        b = clips.shape[0]
        with torch.no_grad():
            feats = clip_features(self.ema, clips).float()  # (B, D, T', h, w)
        spatial = bool(torch.rand(()) < self.switch_prob)
        mixed_batch = bool(torch.rand(()) < self.mix_prob)
        lam = self._beta(self.alpha_spatial if spatial else self.alpha_temporal) if mixed_batch else 1.0
        perm = torch.randperm(b, device=clips.device)

        # Task branch: detached masks, saliency-corrected labels; trains the online network.
        with torch.no_grad():
            if self.extreme_cutoff < lam < 1.0 - self.extreme_cutoff:
                m_b = self.selector(feats, lam, perm, spatial=spatial)  # (B, T', h, w)
            else:
                m_b = torch.full(feats[:, 0].shape, 1.0 - lam, device=feats.device)
            lam_sal = saliency_ratio(feats, 1.0 - m_b, perm)  # (B,)
            mixed = mix_clips(clips, mask_to_clip(m_b, clips.shape), perm)
        logits = self.online(mixed)
        loss_task = soft_target_ce(logits, self._targets(labels, perm, lam_sal))

        # Policy branch: an independent mix whose masks keep their graph; the frozen EMA net carries the
        # gradient back to its input and into the selection module only.
        lam_p = self._beta(self.alpha_spatial, allow_fixed=False)
        perm_p = torch.randperm(b, device=clips.device)
        leaves = {n: p.detach().requires_grad_(True) for n, p in self.selector.named_parameters()}
        with torch.enable_grad():
            m_bp = torch.func.functional_call(self.selector, leaves, (feats, lam_p, perm_p), {"spatial": spatial})
            w_bp = mask_to_clip(m_bp, clips.shape)  # (B, T, 1, H, W)
            mixed_p = mix_clips(clips.detach(), w_bp, perm_p)
            loss_policy = soft_target_ce(self.ema(mixed_p), self._targets(labels, perm_p, lam_p))
            share_a = 1.0 - w_bp.float().mean()
            loss_ratio = self.ratio_weight * F.relu((share_a - lam_p).abs() - self.ratio_margin)
            grads = torch.autograd.grad(loss_policy + loss_ratio, list(leaves.values()))
        self._pending_grads = [g.detach() for g in grads]

        return {
            "loss": loss_task,
            "logits": logits,
            "loss_task": loss_task.detach(),
            "loss_policy": loss_policy.detach(),
            "loss_ratio": loss_ratio.detach(),
            "mix_lambda": torch.tensor(lam),
            "mix_lambda_sal_err": (lam_sal - lam).abs().mean(),  # how far the label ratio moved from lambda
            "policy_share_a": share_a.detach(),
            "policy_ratio_err": (share_a - lam_p).abs().detach(),  # |mean(m'_A) - lambda'|
            "spatial": torch.tensor(float(spatial)),
        }

    # -- schedules and updates -----------------------------------------------------------------------

    def on_epoch_start(self, epoch: int, num_epochs: int, *, steps_per_epoch: int = 0, start_step: int = 0) -> None:
        if self.block_lr_schedule == "cosine":
            self.block_lr_factor = 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, num_epochs)))
        elif self.block_lr_schedule == "step":
            self.block_lr_factor = 0.1 ** sum(epoch >= f * num_epochs for f in self.block_lr_steps)
        else:
            self.block_lr_factor = 1.0

    @torch.no_grad()
    def on_step_end(self) -> None:
        """After the platform's optimiser step: the selection module's SGD step, then the EMA update."""
        if self.selector is not None and self._pending_grads is not None:
            grads = self._pending_grads
            self._pending_grads = None
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                for g in grads:  # the module is outside DDP: average its gradient by hand
                    torch.distributed.all_reduce(g)
                    g.div_(torch.distributed.get_world_size())
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            scale = min(1.0, self.block_grad_clip / (float(norm) + 1e-6)) if self.block_grad_clip > 0 else 1.0
            params = [p for _, p in self.selector.named_parameters()]
            buffers = [
                getattr(self.selector, f"momentum_{n.replace('.', '_')}") for n, _ in self.selector.named_parameters()
            ]
            sgd_update(  # torch's own SGD update, on state that lives in module buffers
                params,
                [g * scale for g in grads],
                buffers,
                weight_decay=self.block_weight_decay,
                momentum=self.block_momentum,
                lr=self.block_lr * self.block_lr_factor,
                dampening=0.0,
                nesterov=False,
                maximize=False,
            )
        m = self.ema_momentum
        for e, p in zip(self.ema.parameters(), self.online.parameters()):
            e.lerp_(p.detach(), 1.0 - m)  # SV-Mix: parameters only, the EMA's BN statistics are its own
        if self.selector is None:
            # The baselines' EMA never runs forward in training, so its BN statistics would stay at
            # their initial values (an EMA evaluated at chance): they follow the online model's.
            for e, b in zip(self.ema.buffers(), self.online.buffers()):
                if e.is_floating_point():
                    e.lerp_(b, 1.0 - m)
                else:
                    e.copy_(b)


def _feature_channels(model: nn.Module) -> tuple[int, int]:
    """D of `clip_features` and the selection module's default query width.

    CNNs (timm 2D trunks, our 3D trunks) expose D as `backbone.num_features`; the query is D / 2
    (official `MB_st(2048, 1024)` for TSM-R50). Video transformers (mvitv2, uniformer) expose D as
    their own `num_features`; the query is D (official `MB_st(768, 768)` for MViTv2, `(512, 512)` for
    UniFormer).
    """
    channels = getattr(getattr(model, "backbone", None), "num_features", None)
    if isinstance(channels, int):
        return channels, channels // 2
    channels = getattr(model, "num_features", None)
    if isinstance(channels, int) and hasattr(model, "forward_features"):
        return channels, channels
    raise TypeError(
        f"svmix: {type(model).__name__} has no `backbone.num_features` nor `num_features` + `forward_features`; "
        "wrap a segment (tsn/tsm/tam), 3D (i3d/r3d/r2plus1d/s3d) or video transformer (mvitv2/uniformer) workload"
    )


def backbone_input(p: SVMixParams) -> InputFormat:
    """The backbone's sampling and normalisation: SV-Mix mixes whatever clips its backbone takes."""
    return get_workload(p.backbone_workload).input_for(p.backbone_params)


@register_workload(
    "svmix",
    params=SVMixParams,
    sampling="segments",  # the default backbone's (tsm); `backbone_input` decides per build
    tiny={"backbone_params": {"backbone": "resnet18"}},
    input_fn=backbone_input,
)
def build_svmix(p: SVMixParams, *, num_classes: int, num_frames: int) -> nn.Module:
    spec = get_workload(p.backbone_workload)
    online = spec.build(p.backbone_params, num_classes=num_classes, num_frames=num_frames)
    if p.ema_init == "copy":
        ema = copy.deepcopy(online)
    else:  # the official code builds a second instance (same pretrained trunk, its own random head)
        ema = spec.build(p.backbone_params, num_classes=num_classes, num_frames=num_frames)
    channels, query_dim = _feature_channels(online) if p.method == "svmix" else (None, 0)
    return SVMix(
        online,
        ema,
        num_classes=num_classes,
        method=p.method,
        alpha_temporal=p.alpha_temporal,
        alpha_spatial=p.alpha_spatial,
        mix_prob=p.mix_prob,
        switch_prob=p.switch_prob,
        label_smoothing=p.label_smoothing,
        fixed_lambda=p.fixed_lambda,
        extreme_cutoff=p.extreme_cutoff,
        ratio_margin=p.ratio_margin,
        ratio_weight=p.ratio_weight,
        ema_momentum=p.ema_momentum,
        query_dim=p.query_dim or query_dim,
        feature_channels=channels,
        block_lr=p.block_lr,
        block_momentum=p.block_momentum,
        block_weight_decay=p.block_weight_decay,
        block_grad_clip=p.block_grad_clip,
        block_lr_schedule=p.block_lr_schedule,
        block_lr_steps=p.block_lr_steps,
    )
