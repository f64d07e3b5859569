"""The workload registry: one line per method, looked up by name.

A workload is a builder decorated with `@register_workload`. It declares a frozen Params dataclass
with the paper's defaults, how its clips are sampled (`segments`: TSN-style, one frame per segment;
`clip`: dense T x stride; `snippets`: TDN-style, `snippet_frames` consecutive frames per segment), a
`tiny` set of params overrides that makes it CPU-test sized, and the input normalisation of its
backbone. A workload whose input depends on its params (SV-Mix takes its backbone's) registers
`input_fn`; the platform asks `spec.input_for(params)`, never the declared fields.
Optional registry fields: `tiny_clip` (the clip its tiny variant
needs, default T=4 at 32 px), `tiny_variants` (tiny params of further architectures behind a param,
each tested as "name[variant]"), `paper_gmacs` (the paper's compute table, rows as the method
defines them) and `compute_by_ratio` (for methods whose MACs depend on the data: a function
`(params, *, num_frames, size_px, num_classes) -> list[dict]` of expected vs measured GMACs per
selection ratio, the configured one marked (that of a resolved Params instance, or of a mapping of
overrides when it sets one), which `actionlab flops` and `list --recipes` print).
Params are checked by `workloads.params` (unknown keys, `Literal` choices, declared ranges), so a
builder never checks a choice by hand.

Module contract (every workload):
  forward(clips)  float (B, T, C, H, W), normalised  ->  logits (B, K)
A method whose training needs more than cross-entropy on those logits subclasses
`workloads.layers.method.Method` and overrides its documented no-op hooks (`training_step`,
`on_epoch_start`, `on_step_end`, `param_groups`, `eval_stats`, `eval_variants`); the loop calls them
on every model, adapting a plain `nn.Module` once with `as_method`.

Initial weights: every method that takes them has one string param, `pretrained` ("" none, "timm", or
a file; `workloads.layers.pretrained`). `build(..., weights=False)` clears it (`without_weights`).

Official checkpoints: a method whose authors released checkpoints defines `checkpoint_filter_fn`
(official state dict, model) -> our state dict in its own module, as timm does;
`spec.checkpoint_filter_fn` finds it by that name (`workloads.layers.checkpoint`).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from torch import nn

from .params import check, from_mapping, nearest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How a clip's frames are picked (`InputFormat.sampling`); the CLI, the validators and the data path
# read the choices from here.
Sampling = Literal["segments", "clip", "snippets"]
SAMPLINGS = typing.get_args(Sampling)
WEIGHTS_PARAM = "pretrained"
# The former convention (before issue 14): `pretrained: bool` (timm) and `pretrained_file: str`.
_FORMER_FILE_PARAM = "pretrained_file"


@dataclass(frozen=True)
class InputFormat:
    """What a built workload eats: how a video becomes its (B, T, C, H, W) input, for training and
    testing alike. A saved model records exactly this (`meta.json`), and the data path builds its clips
    from it (`actionlab.data.dataset.build_dataset`).

    The workload decides `sampling`, `snippet_frames`, `mean` and `std`; the run decides the clip
    (`clip.num_frames`, `clip.stride`, `clip.size_px`, `clip.resize_px`): `spec.input_for` joins them.
    The clip defaults are the common 8 frames at 224 px, for code that needs only the workload's part.
    """

    sampling: Sampling
    num_frames: int = 8  # frames (`segments`, `clip`) or segments (`snippets`)
    stride: int = 1  # frame interval for `clip` sampling
    size_px: int = 224  # crop side fed to the network
    resize_px: int = 256  # short side before cropping
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    snippet_frames: int = 1  # consecutive frames per segment (`snippets`); 1 for the other samplings

    def __post_init__(self):
        check(self)  # `sampling` among its choices
        if self.snippet_frames < 1 or (self.sampling != "snippets" and self.snippet_frames != 1):
            raise ValueError(
                f"snippet_frames={self.snippet_frames} with {self.sampling!r} sampling: only `snippets` "
                "sampling takes more than one frame per segment; take the workload's format "
                "(spec.input_for(params))"
            )
        if min(self.num_frames, self.stride, self.size_px, self.resize_px) < 1:
            raise ValueError(
                f"num_frames={self.num_frames}, stride={self.stride}, size_px={self.size_px}, "
                f"resize_px={self.resize_px}: each must be at least 1"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean {self.mean} / std {self.std}: give one value per RGB channel")
        # Tuples of floats whatever came in (JSON lists, ints), so that equal formats compare equal.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def clip_frames(self) -> int:
        """T of the model's input (B, T, C, H, W): `num_frames`, times `snippet_frames` for `snippets`."""
        return self.num_frames * self.snippet_frames


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    params_cls: type
    builder: Callable[..., nn.Module]
    sampling: str  # the declared input; read it through `input_for(params)`
    tiny: dict = field(default_factory=dict)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    summary: str = ""
    snippet_frames: int = 1
    input_fn: Callable[[Any], InputFormat] | None = None  # resolved Params -> InputFormat, when params decide
    tiny_clip: dict = field(default_factory=dict)  # {"num_frames": T, "size_px": S} for the tiny variant
    tiny_variants: dict = field(default_factory=dict)  # variant name -> its tiny params
    paper_gmacs: tuple = ()  # the paper's compute table (rows defined by the method's module)
    compute_by_ratio: Callable | None = None  # data-dependent compute per selection ratio, see the module doc

    def input_for(self, params: dict | Any | None = None, *, num_frames: int | None = None,
                  stride: int | None = None, size_px: int | None = None,
                  resize_px: int | None = None) -> InputFormat:
        """What a build with `params` eats: its sampling and normalisation, with the run's clip.

        Args:
            params: a dict of overrides or a Params instance (a wrapper's decides through `input_fn`).
            num_frames: `clip.num_frames`; this and the other clip values keep `InputFormat`'s
                defaults when left out (for callers that only need the workload's part).
            stride: `clip.stride`.
            size_px: `clip.size_px`.
            resize_px: `clip.resize_px`.
        """
        if not isinstance(params, self.params_cls):
            params = self.resolve_params(params)
        if self.input_fn is not None:
            declared = self.input_fn(params)
        else:
            declared = InputFormat(sampling=self.sampling, mean=self.mean, std=self.std,
                                   snippet_frames=self.snippet_frames)
        clip = dict(num_frames=num_frames, stride=stride, size_px=size_px, resize_px=resize_px)
        return dataclasses.replace(declared, **{k: v for k, v in clip.items() if v is not None})

    def resolve_params(self, overrides: dict | Any | None = None, *, path: str = ""):
        """The Params dataclass with `overrides` applied, every value checked (`workloads.params`).

        `overrides` is a mapping (unknown keys name the nearest field; `Literal` fields take only their
        choices; declared ranges hold) or a ready Params instance, which is checked and returned as it
        is: a resolved instance is never turned back into a dict. `path` prefixes the keys in errors
        (a wrapper's `backbone_params`).
        """
        owner = f"workload '{self.name}'"
        if isinstance(overrides, self.params_cls):
            return check(overrides, noun="parameter", owner=owner)
        names = [f.name for f in dataclasses.fields(self.params_cls)]
        overrides = _former_weights(dict(overrides or {})) if WEIGHTS_PARAM in names else dict(overrides or {})
        return from_mapping(self.params_cls, overrides, path=path, noun="parameter", owner=owner)

    def build(self, params: dict | Any | None = None, *, num_classes: int, num_frames: int,
              weights: bool = True) -> nn.Module:
        """Builds the module. `params` is a dict of overrides or a ready Params instance.

        `weights=False` builds the same network at random initialisation, reading and downloading
        nothing: for counting MACs, checking params, or loading weights recorded with a model.
        """
        params = self.resolve_params(params)
        if not weights:
            params = without_weights(params)
        return self.builder(params, num_classes=num_classes, num_frames=num_frames)

    @property
    def checkpoint_filter_fn(self) -> Callable[[dict, nn.Module], dict] | None:
        """The method's official-checkpoint converter, `checkpoint_filter_fn(state_dict, model)` in its
        module (timm's convention: beside the model; `workloads.layers.checkpoint`), or None when the
        method releases no checkpoint to import."""
        return getattr(sys.modules[self.builder.__module__], "checkpoint_filter_fn", None)


def nested_workload_fields(params_cls: type) -> list[tuple[str, str]]:
    """(`<x>_workload`, `<x>_params`) field pairs of a wrapper's Params: the inner workload's name and
    its Params (SV-Mix: `backbone_workload`, `backbone_params`)."""
    names = {f.name for f in dataclasses.fields(params_cls)}
    return [(n, n[: -len("_workload")] + "_params") for n in sorted(names)
            if n.endswith("_workload") and n[: -len("_workload")] + "_params" in names]


def without_weights(params):
    """`params` (a Params instance or a dict of overrides) with no weight source: `pretrained` cleared,
    also in a wrapped workload's params (SV-Mix's `backbone_params`)."""
    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in (WEIGHTS_PARAM, _FORMER_FILE_PARAM)}

    if isinstance(params, dict):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in strip(params).items()}
    changes = {f.name: without_weights(getattr(params, f.name)) for f in dataclasses.fields(params)
               if dataclasses.is_dataclass(getattr(params, f.name))}
    if hasattr(params, WEIGHTS_PARAM):
        changes[WEIGHTS_PARAM] = ""
    return dataclasses.replace(params, **changes)


def _former_weights(overrides: dict) -> dict:
    """Overrides recorded before the one `pretrained` string (old recipes, meta.json of registered
    models): `pretrained: true | false` reads as "timm" | "", `pretrained_file: PATH` as PATH."""
    if isinstance(overrides.get(WEIGHTS_PARAM), bool):
        overrides[WEIGHTS_PARAM] = "timm" if overrides[WEIGHTS_PARAM] else ""
    if _FORMER_FILE_PARAM in overrides:
        path = overrides.pop(_FORMER_FILE_PARAM)
        if path and overrides.get(WEIGHTS_PARAM):
            raise ValueError(
                f"pretrained={overrides[WEIGHTS_PARAM]!r} and pretrained_file={path!r} both name weights; "
                f"set only pretrained (a file path, or 'timm')"
            )
        overrides[WEIGHTS_PARAM] = path or overrides.get(WEIGHTS_PARAM, "")
    return overrides


_REGISTRY: dict[str, WorkloadSpec] = {}


def register_workload(
    name: str,
    *,
    params: type,
    sampling: str,
    tiny: dict | None = None,
    mean: tuple = IMAGENET_MEAN,
    std: tuple = IMAGENET_STD,
    snippet_frames: int = 1,
    input_fn: Callable[[Any], InputFormat] | None = None,
    tiny_clip: dict | None = None,
    tiny_variants: dict | None = None,
    paper_gmacs: tuple = (),
    compute_by_ratio: Callable | None = None,
):
    """Decorator: registers `builder(params, *, num_classes, num_frames) -> nn.Module` under `name`.

    `num_frames` is `clip.num_frames`: frames, or segments for `snippets` sampling (the module then
    takes `snippet_frames` frames per segment). `input_fn(params) -> InputFormat` replaces the
    declared sampling / mean / std / snippet_frames when they depend on the params.
    """
    try:
        InputFormat(sampling=sampling, mean=tuple(mean), std=tuple(std), snippet_frames=snippet_frames)
    except ValueError as err:
        raise ValueError(f"workload '{name}': {err}") from None
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
            snippet_frames=snippet_frames,
            input_fn=input_fn,
            tiny_clip=dict(tiny_clip or {}),
            tiny_variants={k: dict(v) for k, v in (tiny_variants or {}).items()},
            paper_gmacs=tuple(paper_gmacs),
            compute_by_ratio=compute_by_ratio,
        )
        return builder

    return wrap


def get_workload(name: str) -> WorkloadSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown workload '{name}'; {nearest(name, _REGISTRY)}")
    return _REGISTRY[name]


def list_workloads() -> list[str]:
    return sorted(_REGISTRY)
