"""What a Train worker feeds its model: the run's input format, its datasets and their loaders.

The training function (`train.loop`) and the benchmarks that measure it (`bench.train`) both set up
their data here, so a benchmark reads exactly what a worker reads.
"""

from __future__ import annotations

import torch

from ..config import Config
from ..data import dataset as data_dataset
from ..data import loader as data_loader
from ..data import manifest as data_manifest
from . import elastic
from .context import RunContext


def input_format(cfg: Config):
    """The `workloads.InputFormat` of a run: the workload's sampling and normalisation (given its params;
    SV-Mix takes its backbone's) with the clip of `clip.*`."""
    from workloads import get_workload

    clip = cfg.clip
    return get_workload(cfg.workload.name).input_for(cfg.workload.params, num_frames=clip.num_frames,
                                                     stride=clip.stride, size_px=clip.size_px,
                                                     resize_px=clip.resize_px)


def pixels_for(cfg: Config) -> str:
    """`data.pixels` for this worker: `auto` is yuv420 when it trains on a GPU, else rgb."""
    if cfg.data.pixels != "auto":
        return cfg.data.pixels
    return "yuv420" if on_gpu(cfg) else "rgb"


def resize_on(cfg: Config) -> str:
    """`data.resize_on` for this worker: `auto` is device when it trains on a GPU and its loader is a
    DataLoader (Ray Data batches travel as arrays of one shape), else loader."""
    if cfg.data.resize_on != "auto":
        return cfg.data.resize_on
    return "device" if on_gpu(cfg) and cfg.data.engine == "loader" else "loader"


def on_gpu(cfg: Config) -> bool:
    """Whether this worker trains on a GPU (it has one and `compute.use_gpu` does not say no)."""
    return torch.cuda.is_available() and cfg.compute.use_gpu is not False


def make_datasets(cfg: Config, ctx: RunContext):
    """Train and val datasets from the manifest(s) resolved by the driver."""
    fmt = input_format(cfg)
    common = dict(root=ctx.root, classes=ctx.classes, seed=cfg.seed, cache_dir=ctx.cache_dir, pixels=pixels_for(cfg),
                  jpeg_decoder=cfg.data.jpeg_decoder)
    train_all = data_manifest.read_manifest(ctx.manifest)
    val_all = data_manifest.read_manifest(ctx.val_manifest)
    train = data_dataset.build_dataset(data_manifest.select_split(train_all, "train"), fmt, train=True,
                                       decoder=cfg.data.decoder, flip=cfg.data.flip, scales=cfg.clip.scales,
                                       resize_on=resize_on(cfg), **common)
    # Training keeps the cheap protocol (1 clip x 1 crop); `actionlab eval` runs the full one.
    val = data_dataset.build_dataset(data_manifest.select_split(val_all, ctx.val_split), fmt, train=False,
                                     decoder=cfg.data.decoder, **common)
    return train, val


def worker_loader(cfg: Config, dataset, *, train: bool, rank: int, world: int):
    """(loader, sampler) of one rank over `dataset`, by `data.engine`: a DataLoader in this process
    (`loader`) or Ray Data tasks (`ray`). The sampler is a `ResumableSampler`: call its `set_epoch`
    (and the dataset's) before each epoch; it shuffles training data reproducibly per epoch."""
    sampler = data_loader.ResumableSampler(
        dataset, num_replicas=world, rank=rank, shuffle=train, seed=cfg.seed, drop_last=False
    )
    drop_last = train and elastic.drop_last(len(dataset), cfg.data.batch_size, world)
    if cfg.data.engine == "ray":
        from ..data.ray_ingest import RayClipLoader

        loader = RayClipLoader(dataset, sampler, batch_size=cfg.data.batch_size, drop_last=drop_last,
                               decode_nodes=cfg.data.decode_nodes)
        return loader, sampler
    loader = data_loader.make_loader(
        dataset,
        batch_size=cfg.data.batch_size,
        shuffle=False,  # the sampler shuffles, reproducibly per epoch
        num_workers=cfg.data.num_loader_workers,
        timeout_s=cfg.data.loader_timeout_s,
        sampler=sampler,
        seed=cfg.seed + rank,
        drop_last=drop_last,
        pin_memory=on_gpu(cfg),  # page-locked batches: the copy to the GPU runs asynchronously
    )
    return loader, sampler
