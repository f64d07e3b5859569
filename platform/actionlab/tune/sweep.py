"""Ray Tune sweeps over Train runs, tracked as one MLflow parent run with a child run per trial.

Each trial is a Tune function trainable that launches a TorchTrainer (the Ray Train V2 pattern);
ASHA stops weak trials at epoch boundaries. On a cluster, trials go wherever their Train workers
fit (the trial actor itself holds no CPU). A trial lost with its node is started again by Tune
(`compute.max_failures` times) and resumes its Train run from the last checkpoint into the same
MLflow child run. Rerunning an interrupted sweep restores it (`Tuner.restore`): finished trials are
kept, unfinished and errored ones resume from their Train checkpoints.
At the end the parent run holds the results table (CSV), the accuracy-vs-GMACs plot with the
Pareto front, and the best config; the best completed trial's checkpoint can be registered.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import cluster, storage, tracking
from ..config import load_recipe, resolve, to_dict
from ..models import registry
from .space import SweepSpec, num_trials, param_space

# The trial actor only drives its Train run (and its controller, which Ray pins to the same node with 0
# CPU): it holds no CPU, so every CPU of a node is left to Train workers. A fractional CPU (0.01) left
# 0.99 of a 1-CPU node, where no 1-CPU worker fits: two concurrent trials then shared one node. Ray
# refuses a bundle of zeros, so the actor reserves some of the memory it does use.
TRIAL_RESOURCES = {"CPU": 0, "memory": 256 * 2**20}


@dataclass(frozen=True)
class SweepOutcome:
    name: str
    parent_run_id: str
    table: list  # one dict per trial
    best: dict | None
    front: list  # trial ids on the Pareto front (max metric, min GMACs)
    restored: bool
    registered: dict | None = None

    def summary(self) -> dict:
        return {"sweep": self.name, "parent_run_id": self.parent_run_id, "restored": self.restored,
                "best": self.best, "pareto_front": self.front, "trials": self.table, "registered": self.registered}


def _trial(config: dict, *, recipe: dict, fixed: dict, sweep_name: str, parent_run_id: str) -> None:
    """One trial: a Train run of the recipe with this trial's sampled values (dotted key -> value)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train.launch import train
    from ..train.resume import MID_EPOCH_KEY

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(recipe, fixed, config, f"{sweep_name}-{trial_id}")
    class EpochReports(TuneReportCallback):
        """Tune's results are the epochs' reports (ASHA counts them as iterations); a checkpoint taken
        inside an epoch stays Train's."""

        def after_report(self, run_context, metrics, checkpoint):
            if MID_EPOCH_KEY not in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    train(
        cfg,
        parent_run_id=parent_run_id,
        callbacks=(EpochReports(),),
        extra_tags={"actionlab.trial_id": trial_id, "actionlab.sweep": sweep_name},
    )


def trial_config(recipe: dict, fixed: dict, sampled: dict, run_name: str):
    """A trial's Config: the recipe, the sweep's fixed values, then Tune's sampled ones, merged as
    dotted key -> value (never through YAML text), under the trial's run name."""
    return resolve(recipe, updates={**fixed, **sampled, "tracking.run_name": run_name})


def trials_that_fit(cfg, nodes) -> tuple[int, str]:
    """How many Train runs of `cfg` fit at once on the cluster's nodes, and why.

    `nodes` is one resource dict per alive node (a single dict is one node). A worker cannot span
    nodes, so the count is of the workers each node holds, not of the cluster's total CPUs: two
    1.5-CPU nodes hold two 1-CPU workers, not three.
    """
    nodes = [nodes] if isinstance(nodes, dict) else list(nodes)
    num_workers, cpus = cfg.compute.num_workers, cfg.compute.cpus_per_worker
    gpus = sum(n.get("GPU", 0) for n in nodes)
    use_gpu = cfg.compute.use_gpu if cfg.compute.use_gpu is not None else gpus > 0
    slots = 0
    for node in nodes:
        on_node = int((node.get("CPU", 0) + 1e-9) // cpus) if cpus else num_workers * len(nodes)
        if use_gpu:
            on_node = min(on_node, int(node.get("GPU", 0) + 1e-9))
        slots += on_node
    fit = slots // num_workers if num_workers else 1
    node_cpus = ", ".join(f"{n.get('CPU', 0):g}" for n in nodes)
    why = (f"each trial runs {num_workers} Train worker(s) x {cpus:g} CPU = {num_workers * cpus:g} CPU"
           f"{f' and {num_workers} GPU' if use_gpu else ''}; the cluster's {len(nodes)} node(s) "
           f"({node_cpus} CPU{f', {gpus:g} GPU in all' if use_gpu else ''}) hold {slots} such workers")
    return fit, why


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Ids of points (id, gmacs, score) that no other point beats on both cost and score."""
    front = []
    for pid, cost, score in points:
        dominated = any(
            (c <= cost and s >= score) and (c < cost or s > score) for q, c, s in points if q != pid
        )
        if not dominated:
            front.append(pid)
    return front


def _plot(table: list, front: list, metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["trial_id"], r["gmacs"], r[metric]) for r in table if _finite(r.get(metric), r.get("gmacs"))]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for tid, x, y in pts:
        on_front = tid in front
        ax.scatter(x, y, s=60 if on_front else 30, c="tab:red" if on_front else "tab:gray", zorder=3)
        ax.annotate(tid[-5:], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fp = sorted((x, y) for tid, x, y in pts if tid in front)
    if fp:
        ax.step([p[0] for p in fp], [p[1] for p in fp], where="post", c="tab:red", lw=1.2, label="Pareto front")
        ax.legend(loc="lower right")
    ax.set_xlabel("GMACs per clip (measured)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _claim_sweep(experiment: str, base: str, root: str) -> tuple[str, str | None]:
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        runs = tracking.find_runs(experiment, name)
        if runs and runs[0].info.status != "FINISHED":
            return name, runs[0].info.run_id
        if runs or storage.exists(storage.join(root, name)):
            continue
        return name, None
    raise RuntimeError(f"no free sweep name for {base!r}")


def sweep(spec: SweepSpec, *, register_name: str = "") -> SweepOutcome:
    """Runs (or restores) the sweep described by `spec`."""
    import ray
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from ..train.launch import storage_root

    recipe = load_recipe(spec.recipe)
    fixed = dict(spec.overrides)
    base_cfg = resolve(recipe, updates=fixed)
    cluster.init_ray()
    cluster.check_config(base_cfg, storage_root=storage_root(base_cfg))  # before the parent run and any trial
    experiment = base_cfg.tracking.experiment
    root = storage.join(storage_root(base_cfg), "sweeps")
    name, parent_run_id = _claim_sweep(experiment, spec.name, root)
    restoring = parent_run_id is not None
    if restoring:
        tracking.client().update_run(parent_run_id, status="RUNNING")
    else:
        parent_run_id = tracking.start_run(experiment, name, tags={"actionlab.kind": "sweep", "actionlab.sweep": name})
        tracking.log_params(parent_run_id, {
            "sweep.recipe": spec.recipe, "sweep.metric": spec.metric, "sweep.mode": spec.mode,
            "sweep.num_samples": spec.num_samples, "sweep.search": spec.search,
            "sweep.scheduler": json.dumps(spec.scheduler), "sweep.space": json.dumps(spec.space),
            **{f"fixed.{k}": v for k, v in spec.overrides.items()},
        })
        tracking.log_text(parent_run_id, json.dumps(to_dict(base_cfg), indent=1, default=str), "base_config.json")

    fit, why = trials_that_fit(base_cfg, cluster.node_resources())
    if fit < 1:
        raise RuntimeError(f"no trial fits on this cluster: {why}; lower compute.num_workers / cpus_per_worker")
    concurrency = min(fit, spec.max_concurrent_trials) if spec.max_concurrent_trials else fit
    print(f"sweep '{name}': {num_trials(spec)} trials, {concurrency} at a time ({why}); "
          f"MLflow parent run {parent_run_id}", flush=True)

    trainable = ray.tune.with_parameters(
        ray.tune.with_resources(_trial, TRIAL_RESOURCES),
        recipe=recipe, fixed=fixed, sweep_name=name, parent_run_id=parent_run_id,
    )
    path = storage.join(root, name)
    ray_root, ray_fs = storage.ray_storage(root)
    ray_path = storage.join(ray_root, name)
    if restoring and ray.tune.Tuner.can_restore(ray_path, storage_filesystem=ray_fs):
        print(f"restoring sweep '{name}' from {storage.redact(path)}: finished trials are kept", flush=True)
        tuner = ray.tune.Tuner.restore(ray_path, trainable=trainable, resume_errored=True,
                                       param_space=param_space(spec), storage_filesystem=ray_fs)
    else:
        epochs = base_cfg.schedule.epochs
        if spec.scheduler["name"] == "asha":
            opts = {k: v for k, v in spec.scheduler.items() if k != "name"}
            # max_t one past the last epoch: ASHA then never stops a trial at its final report, which
            # would kill the Train run before it writes its final checkpoint artifact and closes its
            # MLflow run (a run that finishes on its own is FINISHED, not FAILED).
            # Rungs are epochs, not Tune iterations: a trial restarted after losing its node resumes
            # its Train run mid-way, and its iteration count starts again from 1.
            scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs + 1,
                                      grace_period=int(opts.get("grace_period", 1)),
                                      reduction_factor=float(opts.get("reduction_factor", 2)))
        else:
            scheduler = FIFOScheduler()
        search_alg = None
        if spec.search == "optuna":
            try:
                from ray.tune.search.optuna import OptunaSearch
            except ImportError as err:
                raise RuntimeError("search: optuna needs `pip install 'actionlab[tune]'`") from err
            search_alg = OptunaSearch()
        tuner = ray.tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=ray.tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                                            max_concurrent_trials=concurrency, scheduler=scheduler,
                                            search_alg=search_alg),
            run_config=ray.tune.RunConfig(
                name=name, storage_path=ray_root, storage_filesystem=ray_fs,
                # A trial whose actor was lost with its node (or whose Train run gave up) is started
                # again: it resumes its own Train run from the last checkpoint, into the same child run.
                failure_config=ray.tune.FailureConfig(max_failures=base_cfg.compute.max_failures),
            ),
        )
    try:
        grid = tuner.fit()
    except BaseException:
        tracking.end_run(parent_run_id, "KILLED")
        raise

    table = _results_table(grid, spec, base_cfg.schedule.epochs)
    _close_children(experiment, parent_run_id, table)
    done = [r for r in table if r["status"] == "completed" and _finite(r.get(spec.metric))]
    best = None
    if done:
        pick = max if spec.mode == "max" else min
        best = pick(done, key=lambda r: r[spec.metric])
    front = pareto_front([(r["trial_id"], r["gmacs"], r[spec.metric] if spec.mode == "max" else -r[spec.metric])
                          for r in table if _finite(r.get(spec.metric), r.get("gmacs"))])
    with tempfile.TemporaryDirectory() as tmp:
        import pandas as pd

        pd.DataFrame(table).to_csv(Path(tmp) / "results.csv", index=False)
        _plot(table, front, spec.metric, Path(tmp) / "accuracy_vs_gmacs.png", f"{name}: {spec.metric} vs compute")
        (Path(tmp) / "sweep.json").write_text(json.dumps({"space": spec.space, "scheduler": spec.scheduler,
                                                          "best": best, "pareto_front": front}, indent=1, default=str))
        tracking.log_artifacts(parent_run_id, tmp)
    if best:
        tracking.log_metrics(parent_run_id, {f"best/{spec.metric}": best[spec.metric]}, step=0)
        tracking.set_tags(parent_run_id, {"best.trial_id": best["trial_id"], "best.run_id": best.get("run_id", ""),
                                          **{f"best.{k}": v for k, v in best.items() if k.startswith("config/")}})
    tracking.end_run(parent_run_id, "FINISHED")
    registered = None
    if register_name:
        if not best or not best.get("run_id"):
            raise RuntimeError(f"sweep '{name}': no completed trial to register")
        registered = registry.register(best["run_id"], register_name)
    return SweepOutcome(name=name, parent_run_id=parent_run_id, table=table, best=best, front=front,
                        restored=restoring, registered=registered)


def _results_table(grid, spec: SweepSpec, epochs: int) -> list[dict]:
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        epoch = int(metrics.get("epoch", 0) or 0)
        if result.error is not None:
            status = "error"
        elif epoch >= epochs:
            status = "completed"
        else:
            status = "early-stopped"
        row = {"trial_id": str(metrics.get("trial_id", "")), "status": status, "epochs": epoch}
        row.update({f"config/{k}": result.config.get(k) for k in spec.space})
        for key in (spec.metric, "val/top1", "val/top5", "model/gmacs", "val/gmacs", "train/loss"):
            if key in metrics:
                row[key] = float(metrics[key])
        # Compute per clip as spent: data-dependent methods (AFNet) measure it while validating.
        row["gmacs"] = row.get("val/gmacs", row.get("model/gmacs"))
        if result.error is not None:
            row["error"] = str(result.error)[:500]
        rows.append(row)
    return rows


def _close_children(experiment: str, parent_run_id: str, table: list) -> None:
    """Marks early-stopped trials' child runs as such (Tune kills them without a goodbye), and ends
    the child runs of errored trials FAILED with the trial's error (a trial lost with its node, out of
    retries, leaves its run RUNNING)."""
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    by_trial = {r.data.tags.get("actionlab.trial_id"): r for r in children}
    for row in table:
        run = by_trial.get(row["trial_id"])
        if run is None:
            continue
        row["run_id"] = run.info.run_id
        if row["status"] == "error" and run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, status="FAILED")
            c.set_tag(run.info.run_id, tracking.ERROR_TAG, row.get("error", "the Tune trial failed"))
        if row["status"] == "early-stopped":
            c.set_tag(run.info.run_id, "actionlab.early_stopped", f"after epoch {row['epochs']}")
            # Tune's stop either kills the trial outright (the run stays RUNNING) or interrupts train(),
            # which ends the run FAILED with the interruption as its error: both are a scheduler's stop.
            if run.info.status in ("RUNNING", "FAILED"):
                c.set_terminated(run.info.run_id, status="KILLED")
                if tracking.ERROR_TAG in run.data.tags:
                    c.delete_tag(run.info.run_id, tracking.ERROR_TAG)
