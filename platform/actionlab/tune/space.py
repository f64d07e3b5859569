"""Sweep files: YAML -> a validated `SweepSpec` with `ray.tune` search domains.

A sweep YAML names a base recipe, fixed overrides, the metric and mode, the number of samples,
the scheduler and a search space whose keys are dotted config paths and whose leaves use
`ray.tune`'s own function names:

    recipe: smoke
    overrides: {schedule.epochs: 4}
    metric: val/top1
    mode: max
    num_samples: 4
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
    search: random            # or optuna (pip install 'actionlab[tune]')
    space:
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      optim.weight_decay: {choice: [1.0e-4, 5.0e-4]}

Everything is checked before any trial starts: unknown top-level keys, unknown distributions and
config keys that do not exist (each with the nearest valid name), and one sampled config per
distribution is resolved against the config schema and the workload's params.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workloads.params import nearest

from ..config import ConfigError, load_recipe, load_recipe_text, parse_dotted, resolve

DISTRIBUTIONS = (
    "uniform", "quniform", "loguniform", "qloguniform", "randn", "qrandn",
    "randint", "qrandint", "lograndint", "qlograndint", "choice", "grid_search",
)
SCHEDULERS = ("asha", "fifo")
SEARCHERS = ("random", "optuna")
TOP_LEVEL = ("recipe", "overrides", "metric", "mode", "num_samples", "max_concurrent_trials", "scheduler",
             "search", "space", "description")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    recipe: str
    overrides: dict = field(default_factory=dict)  # dotted key -> fixed value
    metric: str = "val/top1"
    mode: str = "max"
    num_samples: int = 4
    max_concurrent_trials: int = 0  # 0: as many as the cluster fits
    scheduler: dict = field(default_factory=lambda: {"name": "asha"})
    search: str = "random"
    space: dict = field(default_factory=dict)  # dotted key -> {distribution: args}
    description: str = ""


def to_domain(key: str, leaf):
    """`{loguniform: [1e-4, 1e-2]}` -> `ray.tune.loguniform(1e-4, 1e-2)`; plain values stay fixed."""
    from ray import tune

    if not isinstance(leaf, dict) or len(leaf) != 1:
        raise ConfigError(f"space.{key}: expected one distribution like {{loguniform: [1e-4, 1e-2]}}, got {leaf!r}")
    (dist, args), = leaf.items()
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"space.{key}: unknown distribution '{dist}'; {nearest(dist, DISTRIBUTIONS)}")
    fn = getattr(tune, dist)
    if dist in ("choice", "grid_search"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"space.{key}: {dist} takes a non-empty list of values, got {args!r}")
        return fn(args)
    args = args if isinstance(args, list) else [args]
    try:
        return fn(*args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"space.{key}: {dist}{tuple(args)} is not valid ({err})") from None


def _candidates(leaf) -> list:
    """Values to try when validating a distribution against the config schema."""
    (dist, args), = leaf.items()
    if dist in ("choice", "grid_search"):
        return list(args)
    args = args if isinstance(args, list) else [args]
    return [args[0]] if args else []


def load_sweep(path_or_name: str, *, overrides: list[str] | tuple = ()) -> SweepSpec:
    """Reads and validates a sweep YAML (a path, or the name of a file in `tune_spaces/`)."""
    import tune_spaces

    path = Path(path_or_name)
    if not path.exists() and (tune_spaces.SPACES_DIR / f"{path_or_name}.yaml").exists():
        path = tune_spaces.SPACES_DIR / f"{path_or_name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"sweep {path_or_name!r} not found; shipped sweeps: {tune_spaces.list_spaces()}")
    values = load_recipe_text(path.read_text(), str(path))
    for key in values:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{path}: unknown sweep key '{key}'; {nearest(key, TOP_LEVEL)}")
    if "recipe" not in values or "space" not in values:
        raise ConfigError(f"{path}: a sweep needs 'recipe' and 'space'")
    scheduler = values.get("scheduler") or {"name": "asha"}
    if isinstance(scheduler, str):
        scheduler = {"name": scheduler}
    if scheduler.get("name") not in SCHEDULERS:
        raise ConfigError(f"{path}: scheduler '{scheduler.get('name')}' is not one of {list(SCHEDULERS)}")
    search = values.get("search", "random")
    if search not in SEARCHERS:
        raise ConfigError(f"{path}: search '{search}' is not one of {list(SEARCHERS)}")
    mode = values.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"{path}: mode must be max or min, got {mode!r}")
    fixed = dict(values.get("overrides") or {})
    for text in overrides:  # command-line --set lands in the fixed overrides
        key, value = parse_dotted(text)
        fixed[key] = value
    spec = SweepSpec(
        name=path.stem,
        recipe=str(values["recipe"]),
        overrides=fixed,
        metric=str(values.get("metric", "val/top1")),
        mode=mode,
        num_samples=int(values.get("num_samples", 4)),
        max_concurrent_trials=int(values.get("max_concurrent_trials", 0)),
        scheduler=dict(scheduler),
        search=search,
        space=dict(values["space"]),
        description=str(values.get("description", "")),
    )
    validate(spec)
    return spec


def validate(spec: SweepSpec) -> None:
    """Builds every domain and resolves one config per candidate value (nothing runs); resolving
    checks the workload's params too."""

    recipe = load_recipe(spec.recipe)
    resolve(recipe, updates=spec.overrides)  # the fixed part alone must be valid
    for key, leaf in spec.space.items():
        to_domain(key, leaf)
        for value in _candidates(leaf):
            try:
                resolve(recipe, updates={**spec.overrides, key: value})
            except (ConfigError, ValueError) as err:
                raise ConfigError(f"space.{key}: {err}") from None


def num_trials(spec: SweepSpec) -> int:
    """How many trials the sweep runs: `num_samples` times the size of every grid (Tune repeats the
    grids for each sample)."""
    n = spec.num_samples
    for leaf in spec.space.values():
        if isinstance(leaf, dict) and "grid_search" in leaf:
            n *= len(leaf["grid_search"])
    return n


def param_space(spec: SweepSpec) -> dict:
    """Tune's param_space: the search domains under their dotted keys."""
    return {key: to_domain(key, leaf) for key, leaf in spec.space.items()}
