"""Experiment configuration: frozen dataclasses, YAML recipes and dotted `--set` overrides.

Precedence is dataclass defaults < recipe YAML < `--set key=value`. Every key is checked: an unknown
key raises with the nearest valid name, a value of the wrong type raises with the expected type, a
string outside its `Literal` choices raises with the choices. `workload.params` is the workload's own
Params dataclass, resolved once here with every effective value, so what a run records (MLflow
params, `config.yaml`, the checkpoint's `meta.json`) is the network it trained, not only the
overrides. The config becomes a plain dict only at the Ray boundary (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

# The homes of the data choice lists: the fields below read their Literals.
from .data import decode, frame_folders, transforms, yuv

Fusion = Literal["logits", "probs"]  # how a video's views are averaged: `eval.fusion`, read by train.evaluate
FUSIONS = get_args(Fusion)


class ConfigError(ValueError):
    """A recipe, override or value that does not fit the config schema."""


@dataclass(frozen=True)
class WorkloadConfig:
    name: str = "tsm"
    # The workload's Params dataclass with every effective value. A mapping given here (a recipe's
    # overrides, `to_dict` output) is resolved against `name`'s Params on construction: unknown keys
    # raise with the nearest field; wrapped workloads (SV-Mix's `backbone_params`) are resolved too.
    params: Any = None
    # Warm start: a checkpoint URI or `models:/NAME@ALIAS`; the head is re-created when the
    # number of classes differs and the loader reports loaded / skipped / new weights.
    init_from: str = ""

    def __post_init__(self):
        object.__setattr__(self, "params", resolve_workload_params(self.name, self.params))


@dataclass(frozen=True)
class DataConfig:
    manifest: str = ""
    val_manifest: str = ""
    root: str = ""  # default: the root `data index` recorded in the manifest, else its folder
    classes: str = ""  # default: classes.txt beside the manifest
    name: str = ""  # dataset name for tags; default: the manifest folder's name
    batch_size: int = 8  # per Ray Train worker
    num_loader_workers: int = 2
    loader_timeout_s: float = 300.0
    max_bad_fraction: float = 0.05
    flip: transforms.FlipPolicy = "on"  # swap_pairs: left/right classes swap labels on flip
    cache_dir: str = ""  # local read-through cache for remote videos; default under ACTIONLAB_HOME
    # auto: what the manifest's writer measured fastest (`data prepare` -> pyav), else decord
    decoder: Literal["auto", decode.Decoder] = "auto"
    # What videos are cropped in: rgb (frames converted whole by the decoder), or yuv420 (PyAV hands over
    # YUV 4:2:0 planes, the crop is taken and resized on them and colour is converted per batch where
    # the batch is normalised; decord and frame folders stay RGB). auto: yuv420 when the Train worker
    # has a GPU (loader workers do less and the GPU converts), else rgb (converting on the CPU costs
    # the training process more than the loader saves)
    pixels: Literal["auto", decode.Pixels] = "auto"
    # Where training clips cut from YUV planes are resized: loader (per clip, in the loader workers) or
    # device (per batch where it is normalised: the loader only copies the crop box out, the GPU
    # resizes). auto: device when the Train worker has a GPU, else loader
    resize_on: Literal["auto", yuv.ResizeOn] = "auto"
    # Frame folders: pil; pil_draft (libjpeg's DCT-domain downscaling when frames are stored at 2x+ the
    # resize); torchvision (its libjpeg-turbo decode_jpeg)
    jpeg_decoder: frame_folders.JpegDecoder = "pil"
    # loader: a DataLoader in each Train worker (decodes on the worker's node);
    # ray: Ray Data tasks on any node's CPUs decode the batches (decode capacity grows with CPU nodes)
    engine: Literal["loader", "ray"] = "loader"
    # Where data.engine=ray decodes. auto: on nodes that hold no Train worker of the run when the
    # cluster has such nodes with CPUs (CPU-only decode nodes, labelled or not), else on any node;
    # labelled: only on nodes started with the label actionlab.io/role=decode (an autoscaler adds them
    # on demand); any: on any node's CPUs, the Train workers' nodes included. Except with any, Train
    # workers are never placed on nodes labelled actionlab.io/role=decode.
    decode_nodes: Literal["auto", "labelled", "any"] = "auto"

    def __post_init__(self):
        if self.resize_on == "device" and self.engine == "ray":
            raise ConfigError("data.resize_on=device needs data.engine=loader: Ray Data batches are arrays of one "
                              "shape, resized where they are decoded; set data.resize_on=auto or loader")


@dataclass(frozen=True)
class ClipConfig:
    num_frames: int = 8
    stride: int = 1  # frame interval for dense (clip) sampling; unused by segment sampling
    size_px: int = 224  # crop fed to the network
    resize_px: int = 256  # short side before cropping (eval: centre crop of size_px)
    scales: tuple = (1.0, 0.875, 0.75, 0.66)  # multi-scale crop (train), fractions of the short side


@dataclass(frozen=True)
class EvalConfig:
    num_clips: int = 1
    num_crops: int = 1
    fusion: Fusion = "logits"  # how views are averaged per video


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = 10
    warmup_epochs: int = 0
    lr_schedule: Literal["cosine", "step", "constant"] = "cosine"
    lr_steps: tuple = ()  # epochs at which lr *= 0.1 (step schedule)
    # Checkpoints inside an epoch (model, optimiser, scheduler, sampler position), besides the one at
    # each epoch's end: a long epoch interrupted loses at most this interval. 0 turns either off.
    checkpoint_every_minutes: float = 30.0
    checkpoint_every_steps: int = 0


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float = 20.0  # 0 disables
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class ComputeConfig:
    num_workers: int = 1  # Ray Train workers (DDP ranks)
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    amp: bool = True  # bf16 autocast on GPU
    channels_last: bool = False  # 2D-conv weights and clips in channels-last order (GPU tensor cores)
    compile: bool = False  # torch.compile the training step
    fused_optimizer: bool = True  # one fused kernel per optimiser step (GPU only)
    max_failures: int = 2  # worker-group restarts before the run fails
    # Elastic training: the run starts once min_workers fit, resumes from its last checkpoint on the
    # workers that fit after a node is lost, and scales back to num_workers when capacity returns.
    # None: num_workers (fixed size). On W < num_workers workers each optimiser step accumulates
    # gradients over ceil(num_workers / W) micro-batches of data.batch_size, so the global batch per
    # step stays batch_size x num_workers and optim.lr and the LR schedule (counted in optimiser steps
    # of the full-size run) mean what the recipe says; when W does not divide num_workers the global
    # batch is the next larger multiple and lr is scaled linearly to it (logged).
    min_workers: int | None = None
    # A run with fewer than min_workers placeable (fixed size: num_workers) waits this long for the
    # capacity to return, then fails naming what is missing.
    resize_timeout_s: float = 300.0
    # An elastic run below num_workers checks this often whether more workers fit (a scale-up
    # restarts from the last checkpoint).
    resize_check_s: float = 60.0

    def __post_init__(self):
        if self.num_workers < 1:
            raise ConfigError(f"compute.num_workers must be at least 1, got {self.num_workers}")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.num_workers:
            raise ConfigError(
                f"compute.min_workers must be between 1 and compute.num_workers={self.num_workers}, got "
                f"{self.min_workers}; leave it unset for a fixed size"
            )
        for name in ("resize_timeout_s", "resize_check_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"compute.{name} must be positive, got {getattr(self, name)}")

    @property
    def workers_range(self) -> tuple[int, int]:
        """(min, max) Train workers: min_workers (default num_workers) .. num_workers."""
        return (self.num_workers if self.min_workers is None else self.min_workers), self.num_workers


@dataclass(frozen=True)
class StorageConfig:
    uri: str = ""  # checkpoints: local dir or s3://bucket/prefix; default under ACTIONLAB_HOME
    # Local paths (data, checkpoints, a file MLflow store) are on a file system every node mounts at the
    # same path (NFS, FSx, ...): a multi-node cluster then accepts them instead of refusing them.
    shared_fs: bool = False


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "actionlab"
    run_name: str = ""  # default: <workload>-<backbone>_<T>x<stride>_<dataset>; reruns resume it
    register: str = ""  # register the final checkpoint under this model name


@dataclass(frozen=True)
class Config:
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0


def _build(cls: type, values: dict, where: str) -> Any:
    """`cls` from a mapping, checked by the one validator the workloads' Params use too."""
    from workloads.params import ParamsError, from_mapping  # imports the workloads: not at module import

    try:
        return from_mapping(cls, values, path=where, noun="config key")
    except ParamsError as err:
        raise ConfigError(str(err)) from None


def resolve_workload_params(name: str, params: Any = None) -> Any:
    """`name`'s Params dataclass from a mapping of overrides, every value set; a ready instance is
    checked and kept as it is (never turned back into a mapping and resolved again).

    Raises:
        ConfigError: an unknown workload, an unknown parameter (with the nearest name), a value of the
            wrong type, outside its `Literal` choices or its declared range, or a Params instance of
            another workload.
    """
    from workloads import get_workload

    try:
        spec = get_workload(name)
    except KeyError as err:
        raise ConfigError(f"workload.name: {err.args[0]}") from None
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        if not isinstance(params, spec.params_cls):
            raise ConfigError(
                f"workload.params: a {type(params).__name__} was given for workload '{name}', which takes "
                f"{spec.params_cls.__name__}; pass a mapping of overrides to start from '{name}''s defaults"
            )
    elif params is not None and not isinstance(params, dict):
        raise ConfigError(f"workload.params: expected a mapping of {spec.params_cls.__name__} keys, got {params!r}")
    try:
        return spec.resolve_params(params or {})
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"workload.params: {err.args[0] if err.args else err}") from None


def to_dict(config: Config) -> dict:
    """The config as plain nested dicts (for Ray, MLflow params and YAML)."""
    return dataclasses.asdict(config)


def from_dict(values: dict) -> Config:
    """Rebuilds a Config from `to_dict` output or a recipe mapping, validating every key."""
    return _build(Config, values or {}, "")


def merge(base: dict, update: dict) -> dict:
    """`update` laid over `base` key by key, nested mappings merged recursively; neither is changed.

    Args:
        base: nested mapping of config values (e.g. a recipe's).
        update: nested mapping whose values win (e.g. `parse_override` output).

    Returns:
        A new mapping: `base`'s keys with `update`'s values where both have a key.
    """
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_dotted(text: str) -> tuple[str, Any]:
    """Splits `a.b.c=value` into ("a.b.c", value); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. optim.lr=0.01)")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    return ".".join(parts), value


def nest(key: str, value: Any) -> dict:
    """("a.b.c", value) -> {"a": {"b": {"c": value}}}."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def parse_override(text: str) -> dict:
    """Turns `a.b.c=value` into `{"a": {"b": {"c": value}}}`; the value is parsed as YAML."""
    return nest(*parse_dotted(text))


def load_recipe_text(text: str, source: str) -> dict:
    """Parses recipe YAML safely into a mapping."""
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping of config sections, got {type(values).__name__}")
    return values


# --- recipes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperResult:
    """What a recipe's paper reports for it: the `paper:` block of a shipped recipe, kept out of the config.

    top1 / top5 in %, gflops = GMACs per view as the papers count them ("GFLOPs"); None where the
    source has no figure, which `note` then explains.
    """

    source: str  # seed and table, e.g. "AFNet seed: Something-Something V1, More is Less"
    dataset: str = ""  # sthv1 | sthv2 | k400 | mini-kinetics | ...
    top1: float | None = None
    top5: float | None = None
    gflops: float | None = None
    views: str = ""  # as the table writes them, e.g. "1x1", "10x3" (clips x crops)
    note: str = ""
    gflops_note: str = ""  # why the built model's GMACs differ from `gflops` by more than 5% (a test requires it)


@dataclass(frozen=True)
class Recipe:
    """A recipe file: its config mapping (for `resolve`) and, apart from it, the paper's numbers."""

    name: str
    values: dict
    paper: PaperResult | None = None


def recipes_dir() -> Path:
    """`workloads/recipes`: the shipped recipes, one YAML per table row (`_*.yaml` are not recipes)."""
    import workloads

    return Path(workloads.__file__).resolve().parent / "recipes"


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml") if not p.stem.startswith("_"))


def _recipe_source(ref: str) -> str:
    """A shipped recipe name -> its file; a path or URI stays as it is."""
    from . import storage

    candidate = recipes_dir() / f"{ref}.yaml"
    if not storage.is_remote(ref) and not Path(ref).exists():
        if not ref.startswith("_") and candidate.exists():
            return str(candidate)
        raise FileNotFoundError(
            f"recipe {ref!r} not found; give a YAML path or one of the shipped recipes: {shipped_recipes()}"
        )
    return ref


def _paper(values: Any, source: str) -> PaperResult:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: `paper:` must be a mapping of {[f.name for f in dataclasses.fields(PaperResult)]}")
    if "source" not in values:
        raise ConfigError(f"{source}: `paper:` needs `source` (the seed and table the numbers come from)")
    try:
        return _build(PaperResult, values, "paper")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def read_recipe(ref: str) -> Recipe:
    """A recipe path/URI, or the name of a shipped recipe (`smoke`, `tsm_r50_sthv2`, ...).

    Two keys are not config sections: `paper:` (the reported numbers, returned apart as
    `Recipe.paper`, never inherited) and `base: OTHER` (a recipe named as on the command line, whose
    config this one starts from, merged key by key; one level deep: a base may not have a base).
    The config sections themselves are checked by `resolve`.
    """
    from . import storage

    path = _recipe_source(ref)
    values = load_recipe_text(storage.read_text(path), path)
    paper = _paper(values.pop("paper"), path) if "paper" in values else None
    base_ref = values.pop("base", None)
    if base_ref is not None:
        if not isinstance(base_ref, str) or not base_ref:
            raise ConfigError(f"{path}: `base:` must name one recipe, got {base_ref!r}")
        base_path = _recipe_source(base_ref)
        base = load_recipe_text(storage.read_text(base_path), base_path)
        if "base" in base:
            raise ConfigError(f"{path}: its base {base_ref!r} has a base of its own ({base['base']!r}); recipes "
                              "inherit one level deep: copy what you need into this recipe instead")
        base.pop("paper", None)
        base_workload = base.get("workload") or {}
        own_workload = values.get("workload") or {}
        if "name" in own_workload and own_workload["name"] != base_workload.get("name"):
            base_workload.pop("params", None)  # params belong to their workload (as in `resolve`)
        values = merge(base, values)
    return Recipe(name=Path(path).stem, values=values, paper=paper)


def load_recipe(ref: str) -> dict:
    """The config mapping of a recipe (see `read_recipe`), ready for `resolve`."""
    return read_recipe(ref).values


def not_runnable_rows() -> list[dict]:
    """Rows of the seeds' tables without a recipe: `workloads/recipes/_not_runnable.yaml`."""
    path = recipes_dir() / "_not_runnable.yaml"
    rows = yaml.safe_load(path.read_text()) if path.exists() else []
    return list(rows or [])


def resolve(recipe: dict | None = None, overrides: list[str] | tuple = (), *, updates: dict | None = None) -> Config:
    """Defaults < recipe mapping < dotted `--set` overrides < `updates`, validated and resolved.

    Args:
        recipe: a recipe mapping (config sections).
        overrides: `key.path=value` strings (the value is YAML), applied in order.
        updates: dotted key -> value, already parsed (a sweep's fixed and sampled values), applied last.

    `workload.params` belong to their workload: when the updates switch `workload.name`, the recipe's
    params (set for another method) are dropped and the new workload's defaults apply; params given in
    the updates are kept, in whatever order they come. The same holds one level down for a wrapper:
    switching SV-Mix's `backbone_workload` drops the recipe's `backbone_params` for the old backbone.
    """
    # Building the config fills in every other default; the workload's name is needed here, before,
    # to tell which params belong to it (`_drop_stale_params`).
    values = merge({"workload": {"name": WorkloadConfig.name, "params": {}}}, recipe or {})
    steps = [nest(*parse_dotted(text)) for text in overrides] + [nest(k, v) for k, v in (updates or {}).items()]
    combined: dict = {}
    for update in steps:
        combined = merge(combined, update)
    _drop_stale_params(values, combined)
    for update in steps:
        values = merge(values, update)
    return from_dict(values)


def _drop_stale_params(values: dict, update: dict) -> None:
    """Drops the recipe's params that `update` makes belong to another workload (see `resolve`)."""
    from workloads import get_workload
    from workloads.registry import nested_workload_fields

    workload = values.setdefault("workload", {})
    new = update.get("workload")
    if not isinstance(new, dict):
        return
    if "name" in new and new["name"] != workload.get("name"):
        workload["params"] = {}
    params, new_params = workload.get("params"), new.get("params")
    if not isinstance(params, dict) or not isinstance(new_params, dict):
        return
    try:
        params_cls = get_workload(new.get("name", workload.get("name"))).params_cls
    except KeyError:
        return  # an unknown workload: building the config names it
    defaults = {f.name: f.default for f in dataclasses.fields(params_cls)}
    for workload_field, params_field in nested_workload_fields(params_cls):
        current = params.get(workload_field, defaults[workload_field])
        if workload_field in new_params and new_params[workload_field] != current:
            params[params_field] = {}


def dump_yaml(config: Config) -> str:
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return yaml.safe_dump(plain(to_dict(config)), sort_keys=False)


def flat_params(config: Config) -> dict[str, str]:
    """Dotted `section.key` -> string, for MLflow params: every value, workload params included."""
    return flatten(to_dict(config))


def flatten(values: dict) -> dict[str, str]:
    """Nested mappings -> dotted key -> string (a tuple shows as a list, an empty mapping as `{}`)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(list(value) if isinstance(value, tuple) else value)

    walk("", values)
    return out
