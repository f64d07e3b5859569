"""The training driver: resolves data paths and run identity, then runs a Ray Train TorchTrainer.

Run identity is the run name plus the storage URI. Rerunning an interrupted run (same name, MLflow
run not FINISHED) resumes it from its last checkpoint into the same MLflow run; a finished run is
never overwritten: the new run gets a `-2`, `-3`, ... suffix.
"""

from __future__ import annotations


import os
from dataclasses import dataclass, replace
from pathlib import Path

from .. import cluster, storage, tracking
from ..config import Config, dump_yaml, flat_params, to_dict
from ..data import manifest as data_manifest
from ..models import registry
from .context import RunContext
from .run_lock import RunLock


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    run_name: str
    resumed: bool
    metrics: dict
    storage_path: str
    registered: dict | None = None

    def summary(self) -> dict:
        out = {"run_id": self.run_id, "run_name": self.run_name, "resumed": self.resumed, **self.metrics}
        out["checkpoints"] = self.storage_path
        if self.registered:
            out["registered"] = self.registered
        return out


def resolve_data(cfg: Config) -> RunContext:
    """Manifest, root, classes and val split, with the defaults documented in DataConfig (no run identity yet)."""
    if not cfg.data.manifest:
        raise ValueError(
            "data.manifest is not set: pass --set data.manifest=PATH_OR_URI, or make a dataset with "
            "`actionlab data synth DIR` or `actionlab data index ANNOTATIONS ...`"
        )
    manifest = cfg.data.manifest
    if not storage.is_remote(manifest):
        manifest = str(Path(manifest).expanduser().resolve())
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"data.manifest {cfg.data.manifest!r} does not exist (resolved to {manifest})")
    classes_uri = cfg.data.classes or data_manifest.default_classes(manifest)
    classes = data_manifest.read_classes(classes_uri)
    val_manifest = cfg.data.val_manifest or manifest
    if not storage.is_remote(val_manifest):
        val_manifest = str(Path(val_manifest).expanduser().resolve())
    root = cfg.data.root or data_manifest.default_root(manifest)
    if not storage.is_remote(root):
        root = str(Path(root).expanduser().resolve())
    return RunContext(
        manifest=manifest,
        val_manifest=val_manifest,
        val_split="val",
        root=root,
        classes=tuple(classes),
        dataset=cfg.data.name or Path(manifest.rstrip("/")).parent.name,
        cache_dir=cfg.data.cache_dir or str(tracking.home() / "cache"),
    )


def check_buildable(spec, cfg: Config) -> None:
    """Builds the workload once on the meta device (no memory, no weights), so that bad params fail
    here with the builder's own message, before Ray and MLflow are touched. Pretrained weights are
    left to the workers: the driver downloads nothing."""
    import torch

    try:
        with torch.device("meta"):
            spec.build(cfg.workload.params, num_classes=2, num_frames=cfg.clip.num_frames, weights=False)
    except (ValueError, TypeError) as err:
        raise ValueError(f"workload '{spec.name}' cannot be built from workload.params={cfg.workload.params}: {err}") from None


def default_run_name(cfg: Config, dataset: str) -> str:
    backbone = getattr(cfg.workload.params, "backbone", "")
    arch = f"{cfg.workload.name}-{backbone}" if backbone else cfg.workload.name
    return f"{arch}_{cfg.clip.num_frames}x{cfg.clip.stride}_{dataset}"


def storage_root(cfg: Config) -> str:
    if cfg.storage.uri:
        return cfg.storage.uri if storage.is_remote(cfg.storage.uri) else str(Path(cfg.storage.uri).expanduser().resolve())
    return str(tracking.home() / "runs")


def claim_run(cfg: Config, base_name: str, root: str) -> tuple[str, str | None]:
    """Picks the run name to use and, when it is an interrupted run, the MLflow run id to resume.

    Returns (name, run_id or None). A FINISHED MLflow run, or checkpoints in storage that no MLflow
    run owns, make the name taken: the next suffix is tried.
    """
    for n in range(1, 1000):
        name = base_name if n == 1 else f"{base_name}-{n}"
        runs = tracking.find_runs(cfg.tracking.experiment, name)
        if runs:
            if runs[0].info.status == "FINISHED":
                continue
            return name, runs[0].info.run_id
        if storage.exists(storage.join(root, name)):
            continue
        return name, None
    raise RuntimeError(f"could not find a free run name for {base_name!r}")


def check_resources(cfg: Config, use_gpu: bool) -> None:
    """Refuses a run whose smallest worker group (compute.min_workers, default num_workers) cannot fit."""
    import ray

    from ..data.ray_ingest import DECODE_LABEL_KEY, DECODE_LABEL_VALUE, decode_node_table

    have = ray.cluster_resources()
    workers, _ = cfg.compute.workers_range
    setting = "compute.min_workers" if cfg.compute.min_workers is not None else "compute.num_workers"
    need_cpu = workers * cfg.compute.cpus_per_worker
    label = f"{DECODE_LABEL_KEY}={DECODE_LABEL_VALUE}"
    # Train workers never go to declared decode nodes (`train_label_selector`): their CPUs do not count.
    labelled = [n for n in decode_node_table() if n["decode_label"]]
    decode_cpu = 0 if cfg.data.decode_nodes == "any" else sum(n["cpus"] for n in labelled)
    train_cpu = have.get("CPU", 0) - decode_cpu
    if need_cpu > train_cpu:
        beside = f" (and {decode_cpu:g} on nodes labelled {label}, which hold no Train worker)" if decode_cpu else ""
        raise RuntimeError(
            f"{setting}={workers} x compute.cpus_per_worker={cfg.compute.cpus_per_worker} "
            f"needs {need_cpu:g} CPUs but the Ray cluster has {train_cpu:g}{beside}; lower one of them"
        )
    if cfg.data.engine == "ray" and cfg.data.decode_nodes == "labelled":
        # A warning, not a refusal: an autoscaler (KubeRay's decode group at 0 replicas) starts labelled
        # nodes only once the decode tasks ask for them.
        if not any(n["cpus"] >= 1 for n in labelled):
            print(f"data.decode_nodes=labelled: no node with CPUs has the label {label} yet, so decoding waits "
                  f"until one joins; start one with `ray start --address HEAD:6379 --labels {label}`, or use "
                  "data.decode_nodes=auto", flush=True)
    elif cfg.data.engine == "ray" and need_cpu + 1 > have.get("CPU", 0):
        raise RuntimeError(
            f"data.engine=ray decodes in Ray tasks beside the Train workers, but the workers take {need_cpu:g} of "
            f"the cluster's {have.get('CPU', 0):g} CPUs and none is left to decode; add CPU nodes, lower "
            "compute.cpus_per_worker, or use data.engine=loader"
        )
    if use_gpu and workers > have.get("GPU", 0):
        raise RuntimeError(
            f"{setting}={workers} with GPUs needs {workers} GPUs but the "
            f"cluster has {have.get('GPU', 0):g}; set {setting} or compute.use_gpu=false"
        )


def train(
    cfg: Config,
    *,
    register_name: str = "",
    parent_run_id: str = "",
    callbacks: tuple = (),
    extra_tags: dict | None = None,
) -> TrainOutcome:
    """Runs (or resumes) a training run and returns its final metrics.

    `callbacks` are `ray.train.UserCallback`s (a Tune trial passes `TuneReportCallback`);
    `parent_run_id` nests the MLflow run under a sweep's parent run.
    """
    from workloads import get_workload

    spec = get_workload(cfg.workload.name)
    check_buildable(spec, cfg)
    data = resolve_data(cfg)
    root = storage_root(cfg)
    cluster.init_ray()
    import ray

    # Refusals come before the MLflow run and any worker: a refused run leaves nothing behind.
    cluster.check_config(cfg, storage_root=root)
    use_gpu = cfg.compute.use_gpu if cfg.compute.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    check_resources(cfg, use_gpu)
    base_name = cfg.tracking.run_name or default_run_name(cfg, data.dataset)
    run_name, run_id = claim_run(cfg, base_name, root)
    lock = RunLock(storage.join(root, run_name), run_name)
    stale = lock.acquire()  # refuses a second live driver of this run
    if stale:
        print(f"run '{run_name}': its previous driver (pid {stale.get('pid')} on {stale.get('host')}, since "
              f"{stale.get('since')}) is gone; taking over its lock", flush=True)
    try:
        return _train_claimed(cfg, spec, data, root, run_name, run_id, use_gpu=use_gpu, register_name=register_name,
                              parent_run_id=parent_run_id, callbacks=callbacks, extra_tags=extra_tags)
    finally:
        lock.release()


def _train_claimed(cfg: Config, spec, data: RunContext, root: str, run_name: str, run_id: str | None, *,
                   use_gpu: bool, register_name: str, parent_run_id: str, callbacks: tuple, extra_tags: dict | None) -> TrainOutcome:
    """`train` once the run name is claimed and locked: MLflow run, Ray Train, registration."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from . import capacity, elastic
    from .lifeline import Lifeline
    from .system_metrics import SystemMetrics
    from ..data.ray_ingest import train_label_selector
    from .loop import train_worker

    resumed = run_id is not None
    if resumed:
        tracking.client().update_run(run_id, status="RUNNING")
        tracking.delete_tag(run_id, tracking.ERROR_TAG)  # the failure it records is the past attempt's, not this one's
        print(f"resuming interrupted run '{run_name}' (MLflow run {run_id})", flush=True)
    else:
        run_id = tracking.start_run(
            cfg.tracking.experiment,
            run_name,
            tags={"workload": spec.name, "dataset": data.dataset, "actionlab.val_protocol": "1clip x 1crop",
                  **(extra_tags or {})},
            parent_run_id=parent_run_id,
        )
        params = {k: storage.redact(v) if isinstance(v, str) else v for k, v in flat_params(cfg).items()}
        tracking.log_params(run_id, {**params, "data.name": data.dataset,
                                     "data.num_classes": len(data.classes)})
        tracking.log_text(run_id, storage.redact_text(dump_yaml(cfg)), "config.yaml")
    print(f"run '{run_name}': MLflow run {run_id}; checkpoints under {storage.redact(storage.join(root, run_name))}",
          flush=True)

    resources = {"CPU": cfg.compute.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    storage_path, storage_filesystem = storage.ray_storage(root)
    min_workers, num_workers = cfg.compute.workers_range
    if min_workers < num_workers:
        print(f"elastic workers: {min_workers}..{num_workers}; on fewer than {num_workers} each optimiser step "
              f"accumulates gradients so the global batch stays {cfg.data.batch_size * num_workers} "
              f"(data.batch_size x compute.num_workers)", flush=True)
    # Read by Ray Train's controller (propagated from this process): how long one placement of the
    # worker group may wait; CapacityWatch bounds the whole wait and names what is missing.
    start_timeout = capacity.start_timeout_s(min_workers, num_workers, cfg.compute.resize_timeout_s)
    os.environ[capacity.START_TIMEOUT_ENV] = f"{start_timeout:g}"
    watch = capacity.CapacityWatch(min_workers=min_workers, num_workers=num_workers, resources_per_worker=resources,
                                   timeout_s=cfg.compute.resize_timeout_s)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"config": to_dict(cfg),
                           "ctx": replace(data, run_id=run_id, run_name=run_name).to_dict()},
        scaling_config=ray.train.ScalingConfig(
            use_gpu=use_gpu, resources_per_worker=resources,
            **elastic.scaling_kwargs(min_workers, num_workers, cfg.compute.resize_check_s),
            label_selector=train_label_selector(cfg.data.decode_nodes),
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.compute.max_failures, controller_failure_limit=3
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": cluster.worker_env()},
            # The controller and workers die with this process; workers sample system metrics.
            callbacks=[Lifeline(), watch, SystemMetrics(run_id, tracking.tracking_uri()), *callbacks],
        ),
    )
    try:
        result = trainer.fit()
    except BaseException as err:
        shown = capacity.unwrap(err)  # a capacity error says it all; Ray's wrapper adds nothing
        tracking.end_run(run_id, "FAILED" if not isinstance(err, KeyboardInterrupt) else "KILLED")
        tracking.set_tags(run_id, {tracking.ERROR_TAG: storage.redact_text(str(shown))[:4000]})
        if shown is not err:
            raise shown from None
        raise
    metrics = dict(result.return_value or result.metrics or {})
    if result.checkpoint is not None:
        # Ray returns scheme-less paths for S3; the registry shows the full URI of the source checkpoint.
        final = storage.join(root, run_name, os.path.basename(result.checkpoint.path.rstrip("/")))
        tracking.set_tags(run_id, {tracking.CHECKPOINT_URI_TAG: storage.redact(final)})
    tracking.end_run(run_id, "FINISHED")
    registered = None
    name = register_name or cfg.tracking.register
    if name:
        registered = registry.register(run_id, name)
    return TrainOutcome(
        run_id=run_id,
        run_name=run_name,
        resumed=resumed,
        metrics=metrics,
        storage_path=storage.join(root, run_name),
        registered=registered,
    )
