"""Soak: 30 short trainings back to back in a Ray Train worker on the session's Ray head, each
starting its DataLoader workers anew (train and val loaders) while the worker runs Ray's threads,
the lifeline and MLflow's system-metrics monitor: the threads a forked loader could hang on.

One Ray Train call runs them all: a Train worker's start-up (a process importing torch, about a
minute on the shared 2-core CI) would otherwise be most of each training. A hang fails the call
within `data.loader_timeout_s`, naming the stuck worker's stack; no restart hides it
(`FailureConfig(max_failures=0)`)."""

import os
import time
from pathlib import Path

import pytest
import torch
from servers.process import needs_netns

pytestmark = [needs_netns, pytest.mark.integration]

NUM_RUNS = 30


def soak_worker(config: dict) -> dict:
    """`NUM_RUNS` trainings of one epoch, each with a new model, datasets and loaders (as `train.loop`
    builds them), then a validation pass."""
    import threading

    from actionlab.config import from_dict
    from actionlab.train import epoch as core
    from actionlab.train import inputs
    from actionlab.train.context import RunContext
    from actionlab.train.evaluate import stats_tensors
    from workloads import get_workload
    from workloads.layers import as_method

    cfg, ctx = from_dict(config["config"]), RunContext.from_dict(config["ctx"])
    spec = get_workload(cfg.workload.name)
    fmt = inputs.input_format(cfg)
    device = torch.device("cpu")
    mean, std = stats_tensors(fmt.mean, fmt.std, device)
    runs = []
    for run in range(config["runs"]):
        started = time.perf_counter()
        torch.manual_seed(run)
        method = as_method(spec.build(cfg.workload.params, num_classes=len(ctx.classes), num_frames=cfg.clip.num_frames))
        train_set, val_set = inputs.make_datasets(cfg, ctx)
        threads = threading.active_count()  # what a fork would copy mid-lock
        train_loader, _ = inputs.worker_loader(cfg, train_set, train=True, rank=0, world=1)
        val_loader, _ = inputs.worker_loader(cfg, val_set, train=False, rank=0, world=1)
        optimizer = core.build_optimizer(cfg, method)
        scheduler = core.build_scheduler(cfg, optimizer, len(train_loader))
        stats = core.train_one_epoch(core.TrainStep(method), train_loader, optimizer, scheduler, device=device,
                                     mean=mean, std=std)
        val = core.validate(method, val_loader, device=device, mean=fmt.mean, std=fmt.std,
                            num_classes=len(ctx.classes))
        val = next(iter(val.values()))  # the primary variant
        del train_loader, val_loader  # their workers stop; the next training starts new ones
        runs.append({"seen": stats.seen, "val_seen": val.seen, "threads": threads,
                     "seconds": time.perf_counter() - started})
    return {"runs": runs}


def test_thirty_trainings_in_a_threaded_train_worker_never_hang(synth_dataset, tmp_path, ray_address, monkeypatch):
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from actionlab import cluster, tracking
    from actionlab.config import load_recipe, resolve, to_dict
    from actionlab.data import manifest
    from actionlab.train import launch
    from actionlab.train.lifeline import Lifeline
    from actionlab.train.system_metrics import SystemMetrics

    monkeypatch.setenv("ACTIONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # the monitor thread busy throughout
    # The cheapest real training: batches of 8 clips of 2 frames at 16 px, the smallest timm ResNet.
    cfg = resolve(load_recipe("smoke"), [
        f"data.manifest={synth_dataset}", "schedule.epochs=1", "schedule.warmup_epochs=0", "clip.num_frames=2",
        "clip.size_px=16", "clip.resize_px=16", "clip.scales=[1.0]", "data.batch_size=8",
        "data.num_loader_workers=2", "data.loader_timeout_s=30", "workload.params.backbone=resnet10t",
    ])
    # The worker imports `soak_worker` from this file.
    path = os.pathsep.join([str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    cluster.init_ray()
    try:
        ctx = launch.resolve_data(cfg)
        run_id = tracking.start_run("soak", "soak")
        trainer = TorchTrainer(
            soak_worker,
            train_loop_config={"config": to_dict(cfg), "ctx": ctx.to_dict(), "runs": NUM_RUNS},
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name="soak", storage_path=str(tmp_path / "runs"),
                                           failure_config=ray.train.FailureConfig(max_failures=0),
                                           worker_runtime_env={"env_vars": {**cluster.worker_env(), "PYTHONPATH": path}},
                                           callbacks=[Lifeline(), SystemMetrics(run_id, tracking.tracking_uri())]),
        )
        started = time.perf_counter()
        runs = trainer.fit().return_value["runs"]
        print(f"{len(runs)} trainings in {time.perf_counter() - started:.1f}s (Ray Train start included): "
              + " ".join(f"{r['seconds']:.1f}" for r in runs))
    finally:
        ray.shutdown()
    train_rows = len(manifest.select_split(manifest.read_manifest(synth_dataset), "train"))
    val_rows = len(manifest.select_split(manifest.read_manifest(synth_dataset), "val"))
    assert len(runs) == NUM_RUNS
    assert all(r["seen"] == train_rows and r["val_seen"] == val_rows for r in runs), runs
    assert min(r["threads"] for r in runs) >= 3, runs  # the loaders started beside other threads
