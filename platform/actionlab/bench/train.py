"""`actionlab bench train RECIPE --vs-plain`: actionlab's Ray Train path beside a plain PyTorch loop;
`--data-only`: the clips/s the whole input pipeline delivers to a Train worker as (pinned) batches,
no model in between, beside the bare decode rate `bench data` measures on the same files.

Both run the same epoch function (`train.epoch.train_one_epoch`) on the same model, data, optimiser,
batch, seed and intra-op threads, with a validation pass each epoch; the plain loop reads through a
DataLoader (whatever `data.engine` says) and writes no checkpoint and no MLflow run. Steady-state clips/s is the median over epochs after the first
(start-up and first-touch costs excluded); wall time is the whole call, start-up included. The plain
loop runs first, in this process, then the Ray run (a local instance unless `RAY_ADDRESS` is set).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..config import Config
from ..data.ray_ingest import decode_node_table, train_label_selector


@dataclass(frozen=True)
class TrainBenchSide:
    name: str
    clips_per_s: list  # per epoch, training only
    losses: list  # train/loss per epoch
    wall_s: float  # the whole call, start-up included
    epochs_s: float  # training + validation passes, summed over epochs
    ray_start_s: float = 0.0  # starting (or joining) Ray

    @property
    def steady_clips_per_s(self) -> float:
        return steady(self.clips_per_s)


def steady(clips_per_s: list) -> float:
    """The median rate of epochs 2..N (epoch 1 pays start-up), or of the one epoch there is."""
    return statistics.median(clips_per_s[1:] or clips_per_s)


def plain_run(cfg: Config) -> TrainBenchSide:
    """The training a user would write without a platform: one process, no checkpoints, no tracking."""
    from workloads import get_workload
    from workloads.layers import as_method

    from .. import flops
    from ..train import epoch as core
    from ..train import inputs, launch
    from ..train.evaluate import stats_tensors

    start = time.perf_counter()
    cfg = replace(cfg, data=replace(cfg.data, engine="loader"))  # plain PyTorch: a DataLoader, no Ray
    threads = max(1, int(cfg.compute.cpus_per_worker))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # what Ray gives a worker with compute.cpus_per_worker CPUs
    try:
        data = launch.resolve_data(cfg)
        spec = get_workload(cfg.workload.name)
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.compute.use_gpu is not False else "cpu")
        torch.manual_seed(cfg.seed)
        model = spec.build(cfg.workload.params, num_classes=len(data.classes), num_frames=cfg.clip.num_frames)
        fmt = inputs.input_format(cfg)
        # As the worker does, in the same order, so that both draw the same random numbers.
        flops.measure(model, (1, fmt.clip_frames, 3, fmt.size_px, fmt.size_px))
        if cfg.compute.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = model.to(device)
        method = as_method(model)
        step_module = core.TrainStep(method, label_smoothing=cfg.optim.label_smoothing)
        if cfg.compute.compile:
            step_module = torch.compile(step_module)
        train_set, val_set = inputs.make_datasets(cfg, data)
        train_loader, sampler = inputs.worker_loader(cfg, train_set, train=True, rank=0, world=1)
        val_loader, _ = inputs.worker_loader(cfg, val_set, train=False, rank=0, world=1)
        optimizer = core.build_optimizer(cfg, method, fused=cfg.compute.fused_optimizer and device.type == "cuda")
        scheduler = core.build_scheduler(cfg, optimizer, len(train_loader))
        mean, std = stats_tensors(fmt.mean, fmt.std, device)
        rates, losses, epochs_s = [], [], 0.0
        for epoch in range(cfg.schedule.epochs):
            method.on_epoch_start(epoch, cfg.schedule.epochs)
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            epoch_start = time.perf_counter()
            stats = core.train_one_epoch(
                step_module, train_loader, optimizer, scheduler, device=device, mean=mean, std=std,
                grad_clip=cfg.optim.grad_clip, use_amp=cfg.compute.amp and device.type == "cuda",
                on_step_end=method.on_step_end, channels_last=cfg.compute.channels_last,
            )
            core.validate(method, val_loader, device=device, mean=fmt.mean, std=fmt.std,
                          num_classes=len(data.classes), fusion=cfg.eval.fusion)
            epochs_s += time.perf_counter() - epoch_start
            rates.append(stats.clips_per_s)
            losses.append(stats.loss)
    finally:
        torch.set_num_threads(previous_threads)
    return TrainBenchSide("plain PyTorch", rates, losses, time.perf_counter() - start, epochs_s)


def ray_run(cfg: Config) -> TrainBenchSide:
    """`actionlab train` as users run it: Ray Train, a checkpoint and MLflow metrics every epoch."""
    from .. import cluster, tracking
    from ..train import launch

    start = time.perf_counter()
    cluster.init_ray()
    ray_start = time.perf_counter() - start
    name = f"bench-{uuid.uuid4().hex[:8]}"
    cfg = replace(cfg, tracking=replace(cfg.tracking, run_name=name, experiment="actionlab-bench"))
    outcome = launch.train(cfg)
    wall = time.perf_counter() - start
    client = tracking.client()

    def history(key: str) -> list:
        return [m.value for m in sorted(client.get_metric_history(outcome.run_id, key), key=lambda m: m.step)]

    epochs_s = sum(history("train/epoch_s")) + sum(history("val/seconds"))
    return TrainBenchSide("actionlab (Ray Train)", history("train/clips_per_s"), history("train/loss"), wall,
                          epochs_s, ray_start)


def bench_train(cfg: Config, *, log=print) -> tuple[TrainBenchSide, TrainBenchSide]:
    """(plain, ray) sides of the comparison, the plain one measured first."""
    log(f"plain PyTorch loop: {cfg.workload.name}, {cfg.schedule.epochs} epochs, batch {cfg.data.batch_size}, "
        f"{int(cfg.compute.cpus_per_worker)} threads")
    plain = plain_run(cfg)
    log("actionlab train on Ray Train: the same configuration")
    ray_side = ray_run(cfg)
    return plain, ray_side


@dataclass(frozen=True)
class LoaderStart:
    """How soon one way of starting DataLoader workers gives each epoch its first batch."""

    name: str
    first_batch_s: list  # per epoch: from asking for the epoch's batches to the first one
    epoch_s: list  # per epoch: every batch


def loader_startup(cfg: Config, *, epochs: int = 2) -> list[LoaderStart]:
    """The run's training loader started three ways, in this process, `epochs` epochs each: forked
    anew each epoch (what `make_loader` did before), and started once from a fork server or by spawn.

    The fork server is started by the first loader that needs it and kept for the process's life, as
    in a Train worker, so its start-up is counted once, in its first epoch."""
    from torch.utils.data import DataLoader

    from ..data import dataset as data_dataset
    from ..data import loader as data_loader
    from ..train import inputs, launch

    data = launch.resolve_data(cfg)
    train_set, _ = inputs.make_datasets(cfg, data)
    workers = cfg.data.num_loader_workers
    common = dict(batch_size=cfg.data.batch_size, shuffle=False, num_workers=workers, drop_last=False)
    ways = {
        "fork, per epoch (before)": lambda: DataLoader(train_set, collate_fn=data_dataset.collate_clips,
                                                        multiprocessing_context="fork", **common),
        "forkserver, persistent": lambda: data_loader.make_loader(train_set, timeout_s=0, **common),
        "spawn, persistent": lambda: data_loader.make_loader(train_set, timeout_s=0, start_method="spawn",
                                                              **common),
    }
    out = []
    for name, build in ways.items():
        loader = build()
        firsts, totals = [], []
        for epoch in range(epochs):
            train_set.set_epoch(epoch)
            start = time.perf_counter()
            first = None
            for _ in loader:
                first = first or time.perf_counter() - start
            firsts.append(first or 0.0)
            totals.append(time.perf_counter() - start)
        del loader  # its workers stop
        out.append(LoaderStart(name, firsts, totals))
    return out


@dataclass(frozen=True)
class DataOnlyBench:
    """What the input pipeline delivered to one Train worker (rank 0), with no training step in between."""

    clips_per_s: list  # per epoch: clips arriving in the worker as pinned batches / the epoch's seconds
    step_clips_per_s: float  # the training step alone on one of those batches: the rate it could consume
    clips_per_node: dict  # node name -> clips decoded there (data.engine=ray; empty for loader)
    train_nodes: list  # names of the nodes holding the Train workers
    nodes: list  # the cluster's alive nodes: {"node_id", "name", "cpus", "decode_label"}
    wall_s: float
    bare_rounds: list  # clips/s per core of each bare round (`BareRounds`; loader: one before each epoch, one after)
    pinned: bool  # batches were pinned (a GPU was there)
    load_average: float  # 1-minute load average of this machine when the run ended
    batches: str = "rgb"  # what arrived: rgb, i420 (resized in the loader) or crops (`yuv.Crops`: resized on the device)
    delivered_share: float | None = None  # loader: median over epochs 2..N of delivered / (bare x worker cores)

    @property
    def bare_clips_per_core_s(self) -> float:
        """`bench data`'s measure of the same dataset (items + collate, one core): the rounds' median."""
        return statistics.median(self.bare_rounds)

    @property
    def steady_clips_per_s(self) -> float:
        return steady(self.clips_per_s)


class BareRounds:
    """`bench data`'s measure of the run's own training dataset, read in this process on one thread,
    items then their batch, one round of `clips` at a time: the loader's epochs are compared with the
    rounds taken just before and after them, as this machine's speed drifts (by up to 1.7x within an
    hour on shared hosts), so a figure taken minutes apart is no baseline."""

    def __init__(self, cfg: Config, *, clips: int = 12):
        from ..data import decode
        from ..train import inputs, launch

        self.train_set, _ = inputs.make_datasets(cfg, launch.resolve_data(cfg))
        self.decoder = decode.decoder_name(self.train_set.decoder)
        self.clips = clips
        self.rates: list[float] = []  # clips per CPU-second of each round
        self._measure(1, 0)  # imports and page cache

    def _measure(self, count: int, offset: int) -> float:
        from . import data as bench_data

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return bench_data.measure(self.train_set, self.decoder, count, offset)[0]
        finally:
            torch.set_num_threads(threads)

    def take_round(self) -> None:
        """Measures one round of `clips` (the next ones of the dataset) and adds its rate to `rates`."""
        cpu_s = self._measure(self.clips, 1 + len(self.rates) * self.clips)
        self.rates.append(self.clips / max(cpu_s, 1e-9))


def _deliver(cfg: Config, ctx, *, rank: int, world: int, device: torch.device,
             between_epochs: Callable[[], None] | None = None) -> dict:
    """The run's datasets and loader as every Train worker builds them (`train.inputs`), iterated for
    `schedule.epochs` epochs, each batch pinned when the device is a GPU; then the step rate on the last batch.
    `between_epochs` runs before each epoch and after the last, while the loader's workers wait."""
    from workloads import get_workload
    from workloads.layers import as_method

    from ..data import yuv
    from ..train import epoch as core
    from ..train import inputs
    from ..train.evaluate import stats_tensors

    spec = get_workload(cfg.workload.name)
    train_set, _ = inputs.make_datasets(cfg, ctx)
    loader, sampler = inputs.worker_loader(cfg, train_set, train=True, rank=rank, world=world)
    pin = device.type == "cuda"
    rates, batch = [], None
    for epoch in range(cfg.schedule.epochs):
        if between_epochs:
            between_epochs()
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        start, seen = time.perf_counter(), 0
        for batch in loader:
            if pin and len(batch["label"]):
                batch["clip"] = batch["clip"].pin_memory()  # what the copy to the GPU reads from
            seen += len(batch["label"])
        rates.append(seen / max(1e-9, time.perf_counter() - start))
    if between_epochs:
        between_epochs()

    if batch is None or not len(batch["label"]):
        raise ValueError("bench train --data-only: the last training batch is empty; set schedule.epochs >= 1 and "
                         "check the manifest's train split")
    kind = "crops" if isinstance(batch["clip"], yuv.Crops) else "i420" if yuv.is_i420(batch["clip"]) else "rgb"
    # The step's own rate: forward, backward and optimiser on a batch already in memory (no data wait).
    torch.manual_seed(cfg.seed)
    model = spec.build(cfg.workload.params, num_classes=len(ctx.classes), num_frames=cfg.clip.num_frames).to(device)
    method = as_method(model)
    step_module = core.TrainStep(method, label_smoothing=cfg.optim.label_smoothing)
    optimizer = core.build_optimizer(cfg, method)
    fmt = inputs.input_format(cfg)
    mean, std = stats_tensors(fmt.mean, fmt.std, device)
    steps = []
    for repeats in (1, 8):  # the first call warms up (allocations, first-touch)
        scheduler = core.build_scheduler(cfg, optimizer, repeats)
        stats = core.train_one_epoch(step_module, [batch] * repeats, optimizer, scheduler, device=device, mean=mean,
                                     std=std, use_amp=cfg.compute.amp and device.type == "cuda")
        steps.append(stats.seen / max(1e-9, stats.step_time_s))
    return {"clips_per_s": rates, "step_clips_per_s": steps[-1], "pinned": pin, "batches": kind,
            "clips_per_node": dict(getattr(loader, "clips_per_node", {})),
            "train_nodes": list(getattr(loader, "train_nodes", []))}


def data_only_worker(loop_config: dict) -> dict:
    """Ray Train worker of `data_only_run` (data.engine=ray): `_deliver` with node names for the report."""
    import ray
    import ray.train
    import ray.train.torch

    from ..config import from_dict
    from ..train.context import RunContext

    cfg = from_dict(loop_config["config"])
    ctx = RunContext.from_dict(loop_config["ctx"])
    context = ray.train.get_context()
    out = _deliver(cfg, ctx, rank=context.get_world_rank(), world=context.get_world_size(),
                   device=ray.train.torch.get_device())
    names = {n["node_id"]: n["name"] for n in decode_node_table()}
    out["clips_per_node"] = {names.get(k, k): v for k, v in sorted(out["clips_per_node"].items())}
    out["train_nodes"] = [names.get(k, k) for k in out["train_nodes"]] or \
        [names.get(ray.get_runtime_context().get_node_id(), "?")]
    return out


def data_only_run(cfg: Config) -> DataOnlyBench:
    """Clips/s delivered to each Train worker by `data.engine`, with no training step, beside the bare decode
    rate of the same files. data.engine=loader runs the worker's DataLoader in this process (no Ray: the
    loader is the whole pipeline); data.engine=ray runs Ray Train workers on the cluster at `RAY_ADDRESS`
    (or a local instance), the Ray Data tasks placed by `data.decode_nodes`."""
    from ..train import launch

    start = time.perf_counter()
    bare = BareRounds(cfg)
    share = None
    if cfg.data.engine == "loader":
        use_gpu = torch.cuda.is_available() and cfg.compute.use_gpu is not False
        out = _deliver(cfg, launch.resolve_data(cfg), rank=0, world=1,
                       device=torch.device("cuda" if use_gpu else "cpu"), between_epochs=bare.take_round)
        out["train_nodes"], nodes = ["this process"], []
        # Each epoch against the bare rounds just before and after it, times the cores its workers can use.
        cores = loader_cores(cfg.data.num_loader_workers)
        shares = [rate / (cores * (before + after) / 2)
                  for rate, before, after in zip(out["clips_per_s"], bare.rates, bare.rates[1:])]
        share = steady(shares)  # epoch 1 pays the workers' start: counted only when alone
    else:
        for _ in range(3):
            bare.take_round()
        out = _data_only_ray(cfg)
        nodes = decode_node_table()
    return DataOnlyBench(out["clips_per_s"], out["step_clips_per_s"], out["clips_per_node"], out["train_nodes"],
                         nodes, time.perf_counter() - start, bare.rates, out["pinned"], os.getloadavg()[0],
                         out["batches"], share)


def loader_cores(num_loader_workers: int) -> int:
    """The cores a DataLoader's workers can use on this machine: one each, at most every core (at least one:
    with no workers the loader runs in the calling process)."""
    return max(1, min(num_loader_workers, os.cpu_count() or 1))


def _data_only_ray(cfg: Config) -> dict:
    import shutil
    import tempfile

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from .. import cluster
    from ..config import to_dict
    from ..train import launch

    cluster.init_ray()
    data = launch.resolve_data(cfg)
    use_gpu = cfg.compute.use_gpu if cfg.compute.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    launch.check_resources(cfg, use_gpu)
    resources = {"CPU": cfg.compute.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    # Nothing is checkpointed: the storage only holds the controller's run state, on this machine.
    scratch = tempfile.mkdtemp(prefix="actionlab-bench-data-only-")
    try:
        trainer = TorchTrainer(
            data_only_worker,
            train_loop_config={"config": to_dict(cfg), "ctx": data.to_dict()},
            scaling_config=ray.train.ScalingConfig(num_workers=cfg.compute.num_workers, use_gpu=use_gpu,
                                                   resources_per_worker=resources,
                                                   label_selector=train_label_selector(cfg.data.decode_nodes)),
            run_config=ray.train.RunConfig(name=f"bench-data-only-{uuid.uuid4().hex[:8]}", storage_path=scratch,
                                           worker_runtime_env={"env_vars": cluster.worker_env()}),
        )
        return trainer.fit().return_value
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
