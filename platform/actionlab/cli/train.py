"""`actionlab train` and `actionlab tune`: a Ray Train run from a recipe, a Ray Tune sweep over such runs."""

from __future__ import annotations

from .common import add_command, add_set_option, print_result


def add_parser(subparsers) -> None:
    """Adds `train` and `tune` to the top-level subparsers."""
    sp = add_command(subparsers, "train", run_train, "train a workload from a recipe on Ray Train")
    sp.add_argument("recipe", help="recipe YAML path/URI or shipped recipe name (see `actionlab list`)")
    sp.add_argument("--register", metavar="NAME", help="register the final checkpoint under NAME")
    sp.add_argument("--json", action="store_true", help="print one JSON object with the run id and metrics")
    add_set_option(sp)

    sp = add_command(subparsers, "tune", run_tune,
                     "Ray Tune sweep over Train runs (MLflow parent run + a child per trial)")
    sp.add_argument("space", help="sweep YAML path or the name of one in tune_spaces/ (see `actionlab list`)")
    sp.add_argument("--register", metavar="NAME", help="register the best completed trial's checkpoint")
    sp.add_argument("--json", action="store_true")
    add_set_option(sp)


def run_train(args) -> int:
    """`actionlab train RECIPE`: `train.launch.train` on the resolved recipe."""
    from ..config import load_recipe, resolve
    from ..train.launch import train

    cfg = resolve(load_recipe(args.recipe), args.set)
    outcome = train(cfg, register_name=args.register or "")
    print_result(outcome.summary(), args.json)
    return 0


def run_tune(args) -> int:
    """`actionlab tune SPACE`: `tune.sweep.sweep`, then a table of the trials."""
    from ..tune.space import load_sweep
    from ..tune.sweep import sweep

    spec = load_sweep(args.space, overrides=args.set)
    outcome = sweep(spec, register_name=args.register or "")
    if args.json:
        print_result(outcome.summary(), True)
        return 0
    metric = spec.metric
    print(f"sweep '{outcome.name}' (MLflow parent run {outcome.parent_run_id}):")
    for row in outcome.table:
        mark = "*" if row["trial_id"] in outcome.front else " "
        cfg = " ".join(f"{k.removeprefix('config/')}={v:.4g}" if isinstance(v, float) else f"{k.removeprefix('config/')}={v}"
                       for k, v in row.items() if k.startswith("config/"))
        print(f" {mark} {row['trial_id']:>12s} {row['status']:>13s} epochs {row['epochs']:>3d} "
              f"{metric} {row.get(metric, float('nan')):.4f} GMACs {row.get('gmacs') or float('nan'):.3f}  {cfg}")
    if outcome.best:
        print(f"best: {outcome.best['trial_id']} {metric} {outcome.best[metric]:.4f} (* = on the accuracy/GMACs front)")
    if outcome.registered:
        print(f"registered {outcome.registered['name']} v{outcome.registered['version']}")
    return 0
