"""MACs and parameters of any workload at any clip shape, measured on the real module.

Counting uses PyTorch's `FlopCounterMode` (convolutions, mm/addmm/bmm, attention) during one plain
eval-mode forward, so data-dependent methods are counted as they run. The forward runs on the `meta`
device when the module allows it (full-size models at 32 frames x 224 px cost no compute), else on
the module's own device. Papers' "GFLOPs" are GMACs: MACs = counted FLOPs / 2.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from workloads import get_workload

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Compute:
    """Cost of one forward of one clip.

    gmacs: every counted multiply-accumulate (convolutions + matmuls + attention), in 1e9; the
        headline number, comparable with the papers' "GFLOPs".
    params: all parameters, trainable or frozen.
    conv_gmacs: convolutions only (the IBM/fvcore-table convention); equals `gmacs` up to the
        classifier for CNNs, much smaller for transformers.
    """

    gmacs: float
    params: int
    conv_gmacs: float | None = None

    def as_metrics(self) -> dict[str, float]:
        """`model/*` metric keys, as logged to MLflow."""
        out = {"model/gmacs": self.gmacs, "model/params": float(self.params)}
        if self.conv_gmacs is not None:
            out["model/conv_gmacs"] = self.conv_gmacs
        return out


def _meta_copy(model: nn.Module) -> nn.Module:
    """A structural copy of `model` whose parameters and buffers live on `meta` (no data copied)."""
    memo: dict[int, torch.Tensor] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def _count(model: nn.Module, clip_shape: tuple, device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    clips = torch.randn(clip_shape, device=device, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(clips)
    per_op = counter.get_flop_counts().get("Global", {})
    conv = sum(n for op, n in per_op.items() if "convolution" in str(op))
    return counter.get_total_flops() / 2e9, conv / 2e9


def measure(model: nn.Module, clip_shape: tuple, *, device: str | torch.device = "meta") -> Compute:
    """MACs and params of one forward of `model` on a random clip of `clip_shape`, in eval mode.

    Args:
        model: any workload module (left unchanged: weights, device and train/eval modes).
        clip_shape: (1, T, C, H, W); a larger batch counts that many clips.
        device: "meta" counts on a weightless copy and falls back to the module's own device when
            the module cannot run on meta (data-dependent control flow, unsupported ops); any other
            device forces a real forward there. A module whose weights are on meta must run on meta.
    """
    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    if torch.device(device).type == "meta":
        try:
            gmacs, conv = _count(_meta_copy(model).eval(), clip_shape, torch.device("meta"), dtype)
            return Compute(gmacs=gmacs, params=params, conv_gmacs=conv)
        except Exception as err:  # noqa: BLE001  (any failure on meta: retry for real, which raises real errors)
            if first is not None and first.device.type == "meta":
                raise RuntimeError(
                    f"{type(model).__name__} cannot be counted on the meta device ({err}) and has no real "
                    "weights to fall back on; build it on a real device"
                ) from err
            log.info("%s does not run on the meta device (%s); counting with a real forward", type(model).__name__, err)
        device = first.device if first is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        gmacs, conv = _count(model, clip_shape, torch.device(device), dtype)
    finally:
        for m, training in modes.items():
            m.training = training
    return Compute(gmacs=gmacs, params=params, conv_gmacs=conv)


def workload_compute(
    name: str,
    *,
    num_frames: int,
    size_px: int,
    num_classes: int,
    params: dict | object | None = None,
) -> Compute:
    """Compute of workload `name` at a (1, T, 3, size_px, size_px) clip, T = num_frames (segments x
    snippet frames for `snippets` sampling: `spec.input_for(params, num_frames=num_frames).clip_frames`).

    `params` are the workload's Params overrides (dict) or a Params instance. `pretrained` is
    ignored: weights do not change MACs, so nothing is read or downloaded. The model is built and counted on the meta device when it allows, else on CPU.
    """
    spec = get_workload(name)
    resolved = spec.resolve_params(params)  # a Params instance is checked, not rebuilt
    clip_shape = (1, spec.input_for(resolved, num_frames=num_frames).clip_frames, 3, size_px, size_px)
    try:
        with torch.device("meta"):
            model = spec.build(resolved, num_classes=num_classes, num_frames=num_frames, weights=False)
        return measure(model, clip_shape)
    except Exception as err:  # noqa: BLE001  (needs real tensors: build and count on CPU, which raises real errors)
        log.info("workload %r cannot be counted on the meta device (%s); using CPU", name, err)
    model = spec.build(resolved, num_classes=num_classes, num_frames=num_frames, weights=False)
    return measure(model, clip_shape, device="cpu")


def recipe_gmacs(cfg) -> float:
    """GMACs per view of the model a resolved config builds, at its clip size, with no weights read.

    For a data-dependent workload (one with `compute_by_ratio`) whose config sets the selection ratio,
    the MACs measured at that ratio; otherwise one forward as `workload_compute` counts it.
    """
    spec = get_workload(cfg.workload.name)
    shape = dict(num_frames=cfg.clip.num_frames, size_px=cfg.clip.size_px, num_classes=400)
    params = cfg.workload.params
    if spec.compute_by_ratio is not None:
        rows = [r for r in spec.compute_by_ratio(params, **shape) if r.get("configured")]
        if rows:
            return rows[0]["measured_gmacs"]
    return workload_compute(cfg.workload.name, params=params, **shape).gmacs


def recipe_rows(*, measure: bool = False) -> list[dict]:
    """The papers' tables, runnable: one row per shipped recipe with a `paper:` block.

    Args:
        measure: also count the GMACs of the model each recipe builds (on the module, no weights read;
            minutes on 2 cores).

    Returns:
        One mapping per recipe: its name, the paper's source, dataset, views and numbers, the recipe's
        workload, frames, stride and views, and `gmacs` (None unless `measure`).
    """
    from .config import read_recipe, resolve, shipped_recipes

    rows = []
    for name in shipped_recipes():
        recipe = read_recipe(name)
        if recipe.paper is None:
            continue
        cfg = resolve(recipe.values)
        paper = recipe.paper
        rows.append({
            "recipe": name, "source": paper.source, "workload": cfg.workload.name, "dataset": paper.dataset,
            "frames": cfg.clip.num_frames, "stride": cfg.clip.stride,
            "views": f"{cfg.eval.num_clips}x{cfg.eval.num_crops}", "paper_views": paper.views,
            "paper_top1": paper.top1, "paper_top5": paper.top5, "paper_gflops": paper.gflops, "note": paper.note,
            "gflops_note": paper.gflops_note,
            "gmacs": round(recipe_gmacs(cfg), 2) if measure else None,
        })
    return rows
