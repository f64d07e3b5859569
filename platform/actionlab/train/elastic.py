"""Elastic workers: what a run keeps when it trains on fewer workers than the recipe asks.

`compute.min_workers` < `compute.num_workers` becomes Ray Train V2's elastic
`ScalingConfig(num_workers=(min, max))`: the run starts once `min` workers fit, restarts from its last
checkpoint on the workers that fit after a node is lost, and scales back up (again from the last
checkpoint) when Ray's resize monitor sees room, every `compute.resize_check_s`.

The rule on W < N workers (N = `compute.num_workers`): each optimiser step accumulates gradients over
k = ceil(N / W) micro-batches of `data.batch_size` per worker, so a step sees W x k x batch_size clips,
the recipe's global batch when W divides N (the next larger multiple otherwise, with lr scaled linearly
to it). The LR schedule counts optimiser steps of the full-size run, so the LR at a given fraction of
training is the same whatever the world size was before or after a resize.

How long a run waits for capacity is `train.capacity`'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WorldPlan:
    """How a run on `world` workers keeps the recipe's global batch of `num_workers` workers."""

    world: int
    num_workers: int

    @property
    def accum_steps(self) -> int:
        """Micro-batches per optimiser step on each worker."""
        return math.ceil(self.num_workers / self.world)

    @property
    def lr_scale(self) -> float:
        """Linear lr scaling for a global batch larger than the recipe's (1.0 when `world` divides it)."""
        return self.world * self.accum_steps / self.num_workers

    def metrics(self) -> dict:
        return {"train/world_size": self.world, "train/accum_steps": self.accum_steps}

    def describe(self, batch_size: int) -> str:
        glob = self.world * self.accum_steps * batch_size
        line = (f"{self.world} of {self.num_workers} workers: each optimiser step accumulates {self.accum_steps} "
                f"micro-batch(es) of {batch_size} clips per worker, global batch {glob}")
        if self.lr_scale != 1.0:
            return line + (f" (recipe: {batch_size * self.num_workers}; lr scaled x{self.lr_scale:.3g} to it)")
        return line + " as the recipe says (data.batch_size x compute.num_workers)"


def drop_last(num_samples: int, batch_size: int, world: int) -> bool:
    """Whether a training loader drops its last partial batch: only when each rank has two full ones."""
    return num_samples >= batch_size * world * 2


def batches_per_rank(num_samples: int, batch_size: int, world: int) -> int:
    """Training batches per rank per epoch with a DistributedSampler over `world` ranks (`drop_last`)."""
    per_rank = math.ceil(num_samples / world)
    if drop_last(num_samples, batch_size, world):
        return per_rank // batch_size
    return math.ceil(per_rank / batch_size)


def sync_lr(scheduler) -> None:
    """Sets the optimiser's lr from a restored LambdaLR's step count and this run's lr scale (the
    restored value is the one the saving run computed, with its own world size's scale)."""
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)


def scaling_kwargs(min_workers: int, num_workers: int, resize_check_s: float) -> dict:
    """`ray.train.ScalingConfig` keywords: a fixed size, or elastic `(min, max)` with its resize monitor."""
    if min_workers < num_workers:
        return {"num_workers": (min_workers, num_workers), "elastic_resize_monitor_interval_s": resize_check_s}
    return {"num_workers": num_workers}
