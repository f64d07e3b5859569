"""The workload registry: one line per method, looked up by name.

A workload is a builder decorated with `@register_workload`. It declares a frozen Params dataclass
with the paper's defaults, how its clips are sampled (`segments`: TSN-style, one frame per segment;
`clip`: dense T x stride), a `tiny` set of params overrides that makes it CPU-test sized, and the
input normalisation of its backbone. Optional registry fields: `tiny_clip` (the clip its tiny variant
needs, default T=4 at 32 px), `tiny_variants` (tiny params of further architectures behind a param,
each tested as "name[variant]"), `paper_gmacs` (the paper's compute table, rows as the method
defines them) and `compute_by_ratio` (for methods whose MACs depend on the data: a function
`(overrides, *, num_frames, size_px, num_classes) -> list[dict]` of expected vs measured GMACs per
selection ratio, the configured one marked, which `actionlab flops` and `list --recipes` print).

Module contract (every workload):
  forward(clips)  float (B, T, C, H, W), normalised  ->  logits (B, K)
Optional hooks a module may define (the train loop calls them when present, never by name):
  training_step(clips, labels) -> dict   "loss" (scalar) required, "logits" (B, K) optional,
                                         any other scalar entries are logged as `train/<key>`
  on_epoch_start(epoch, num_epochs)      schedules that live in the method (temperatures, targets)
  on_step_end()                          after each optimiser step (EMA updates)
  param_groups() -> list[dict]          optimiser groups: {"params", "lr_scale", "weight_decay_scale"}
  eval_stats() -> dict                   scalars measured over the last validation (logged as `val/<key>`)
  eval_variants() -> dict[str, Module]   models to validate, first = primary (e.g. {"ema": .., "online": ..});
                                         each is scored as `val/<name>/top1`, the primary also as `val/top1`
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAMPLINGS = ("segments", "clip")


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    params_cls: type
    builder: Callable[..., nn.Module]
    sampling: str
    tiny: dict = field(default_factory=dict)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    summary: str = ""
    tiny_clip: dict = field(default_factory=dict)  # {"num_frames": T, "size_px": S} for the tiny variant
    tiny_variants: dict = field(default_factory=dict)  # variant name -> its tiny params
    paper_gmacs: tuple = ()  # the paper's compute table (rows defined by the method's module)
    compute_by_ratio: Callable | None = None  # data-dependent compute per selection ratio, see the module doc

    def resolve_params(self, overrides: dict | None = None):
        """The Params dataclass with `overrides` applied; unknown keys name the nearest field."""
        overrides = dict(overrides or {})
        names = [f.name for f in dataclasses.fields(self.params_cls)]
        for key in overrides:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ValueError(
                    f"unknown parameter '{key}' for workload '{self.name}'; {hint}known: {sorted(names)}"
                )
        defaults = self.params_cls()
        for key, value in list(overrides.items()):
            default = getattr(defaults, key)
            # YAML lists arrive where Params use tuples; ints where floats are expected.
            if isinstance(default, tuple) and isinstance(value, list):
                overrides[key] = tuple(value)
            elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                overrides[key] = float(value)
            elif default is not None and not isinstance(overrides[key], type(default)):
                raise ValueError(
                    f"workload '{self.name}' parameter '{key}': expected {type(default).__name__}, "
                    f"got {value!r}"
                )
        return dataclasses.replace(defaults, **overrides)

    def build(self, params: dict | Any | None = None, *, num_classes: int, num_frames: int) -> nn.Module:
        """Builds the module. `params` is a dict of overrides or a ready Params instance."""
        if not isinstance(params, self.params_cls):
            params = self.resolve_params(params)
        return self.builder(params, num_classes=num_classes, num_frames=num_frames)


_REGISTRY: dict[str, WorkloadSpec] = {}


def register_workload(
    name: str,
    *,
    params: type,
    sampling: str,
    tiny: dict | None = None,
    mean: tuple = IMAGENET_MEAN,
    std: tuple = IMAGENET_STD,
    tiny_clip: dict | None = None,
    tiny_variants: dict | None = None,
    paper_gmacs: tuple = (),
    compute_by_ratio: Callable | None = None,
):
    """Decorator: registers `builder(params, *, num_classes, num_frames) -> nn.Module` under `name`."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"workload '{name}': sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"workload '{name}': params must be a dataclass, got {params!r}")

    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"workload '{name}' is already registered")
        doc = getattr(sys.modules.get(builder.__module__), "__doc__", None) or ""
        _REGISTRY[name] = WorkloadSpec(
            name=name,
            params_cls=params,
            builder=builder,
            sampling=sampling,
            tiny=dict(tiny or {}),
            mean=tuple(mean),
            std=tuple(std),
            summary=doc.strip().splitlines()[0] if doc.strip() else "",
            tiny_clip=dict(tiny_clip or {}),
            tiny_variants={k: dict(v) for k, v in (tiny_variants or {}).items()},
            paper_gmacs=tuple(paper_gmacs),
            compute_by_ratio=compute_by_ratio,
        )
        return builder

    return wrap


def get_workload(name: str) -> WorkloadSpec:
    if name not in _REGISTRY:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise KeyError(f"unknown workload '{name}'; {hint}known: {known}")
    return _REGISTRY[name]


def list_workloads() -> list[str]:
    return sorted(_REGISTRY)
