"""Loaders over clip datasets: DataLoaders whose workers start from a fork server and report their
stacks when they hang, and the sampler that lets an epoch resume part-way.

Each rank of a run gets its loader and sampler from `train.inputs.worker_loader`.
"""

from __future__ import annotations

import faulthandler
import functools
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import weakref
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from actionlab.data.batch_ring import BatchRing
from actionlab.data.dataset import collate_clips

# Loader workers start from a fresh server process, never forked from the caller: a Train worker runs
# threads (Ray's, the lifeline, MLflow's system metrics), and a fork taken while one of them holds a
# lock leaves the child waiting on it forever.
START_METHODS = ("forkserver", "spawn", "fork")
# Imported once by the fork server, not by every worker ("__main__": the program's main module,
# which each worker would import otherwise; this module imports the dataset's).
_PRELOAD = ["__main__", "actionlab.data.loader"]


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    timeout_s: float,
    sampler: Sampler | None = None,
    drop_last: bool,
    pin_memory: bool = False,
    seed: int = 0,
    start_method: str = "forkserver",
) -> DataLoader:
    """A DataLoader over clips with `collate_clips`.

    Workers start once per loader (`persistent_workers`), from a fork server (`start_method`), and
    follow the dataset's `set_epoch` through shared memory. They write `yuv.Crops` batches into shared
    segments they reuse (`batch_ring`). The timeout (only meaningful with workers)
    turns a hung worker into a `LoaderTimeout` that shows each worker's Python stack.

    Args:
        dataset: usually a `VideoClipDataset` (picklable: workers receive a copy).
        batch_size: clips per batch (before bad ones are dropped).
        shuffle: shuffle when no sampler is given.
        num_workers: loader processes (0 loads in this process).
        timeout_s: seconds to wait for a batch from a worker.
        sampler: e.g. a `DistributedSampler`; shuffling is then its job.
        drop_last: drop the last incomplete batch.
        pin_memory: pin batches for faster host-to-GPU copies.
        seed: seeds the workers' base seed, from a generator of the loader's own (workers never draw
            from torch's global RNG).
        start_method: one of `START_METHODS`; `fork` only to measure what the others cost.
    """
    if start_method not in START_METHODS:
        raise ValueError(f"start_method={start_method!r} is not one of {list(START_METHODS)}")
    common = dict(batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
                  collate_fn=collate_clips, drop_last=drop_last, pin_memory=pin_memory)
    if num_workers == 0:
        return DataLoader(dataset, **common)
    # Persistent workers draw their base seed once, at the first epoch: drawn from the global RNG, a run
    # resumed at a later epoch would draw it there and train on with other random numbers.
    common["generator"] = torch.Generator().manual_seed(seed)
    common["collate_fn"] = functools.partial(collate_clips, ring=BatchRing(num_workers))
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(_PRELOAD)  # no effect once this process's fork server runs
    return StackReportingLoader(dataset, num_workers=num_workers, timeout=timeout_s, persistent_workers=True,
                                multiprocessing_context=context, **common)


class LoaderTimeout(RuntimeError):
    """No batch came from the loader's workers within its timeout; the message holds their stacks."""


_stack_file = None  # in a loader worker: the open file faulthandler writes the stack into


def _register_stack_dump(folder: str, worker_id: int) -> None:
    """Worker init: SIGUSR1 writes every thread's Python stack into `folder/<worker>.<pid>.stack`.

    faulthandler writes from the signal handler itself, so a worker blocked in C code or on a lock
    still answers."""
    global _stack_file
    _stack_file = open(os.path.join(folder, f"{worker_id}.{os.getpid()}.stack"), "w")  # noqa: SIM115 (kept open)
    faulthandler.register(signal.SIGUSR1, file=_stack_file, all_threads=True)


class StackReportingLoader(DataLoader):
    """A DataLoader with workers whose timeout error says what each worker was doing (its stack)."""

    def __init__(self, dataset, **kwargs):
        folder = tempfile.mkdtemp(prefix="actionlab-loader-")
        super().__init__(dataset, worker_init_fn=functools.partial(_register_stack_dump, folder), **kwargs)
        self.stack_dir = folder
        weakref.finalize(self, shutil.rmtree, folder, True)

    def __iter__(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as err:
                if not str(err).startswith("DataLoader timed out"):
                    raise
                message = self.timeout_report()
                sys.stderr.write(message + "\n")  # the console, whoever catches the error
                sys.stderr.flush()
                raise LoaderTimeout(message) from None
            yield batch

    def timeout_report(self, wait_s: float = 5.0) -> str:
        """Each live worker's Python stack (asked for with SIGUSR1), in a message that says what to do."""
        asked = {}
        for path in sorted(Path(self.stack_dir).glob("*.stack")):
            worker, pid = (int(part) for part in path.name.split(".")[:2])
            size = path.stat().st_size
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                continue
            asked[(worker, pid)] = (path, size)
        stacks, deadline = {}, time.monotonic() + wait_s
        while asked and time.monotonic() < deadline:
            time.sleep(0.1)
            for key, (path, size) in list(asked.items()):
                text = path.read_bytes()[size:].decode(errors="replace")
                if text and stacks.get(key) == text:  # written, and no longer growing
                    del asked[key]
                stacks[key] = text
        stacks = {key: text.rstrip() for key, text in stacks.items() if text.strip()}
        shown = "\n".join(f"worker {w} (pid {pid}):\n{textwrap.indent(stacks.get((w, pid), '(no stack written)'), '    ')}"
                          for w, pid in sorted({*stacks, *asked}))
        return (f"no batch from the DataLoader's {self.num_workers} workers in {self.timeout:g}s "
                f"(data.loader_timeout_s). What each worker was doing (most recent call first):\n{shown}\n"
                "A worker stuck reading a file or a store names it in its stack: fix or drop that sample "
                "(`actionlab data check MANIFEST`) or the storage; if batches are merely slow, raise "
                "data.loader_timeout_s.")


class ResumableSampler(DistributedSampler):
    """A `DistributedSampler` that can begin an epoch part-way, by skipping indices (nothing is decoded).

    `set_epoch(epoch, start=S)`: S is how many samples of the epoch's order all ranks together have
    consumed (batches x batch size x ranks, `position_after`). With the same number of ranks, each rank
    gets exactly `DistributedSampler`'s order less its first S / ranks indices, so a resumed epoch sees
    the batches the uninterrupted one saw. With another number of ranks (an elastic restart) the samples
    left are dealt out again, each once, padded to equal lengths as `DistributedSampler` pads.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = int(start)

    def position_after(self, batches: int, batch_size: int) -> int:
        """The `start` at which an epoch resumes after this rank (and every other) took `batches` more."""
        return self.start + batches * batch_size * self.num_replicas

    def _remaining(self) -> list[int]:
        """The epoch's global order from `start` on, padded to a multiple of the ranks (uneven ones dropped
        with `drop_last`); rank r takes every num_replicas-th item from r."""
        if self.shuffle:  # the order DistributedSampler draws: a permutation seeded by seed + epoch
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.dataset), generator=g).tolist()
        else:
            order = list(range(len(self.dataset)))
        if self.drop_last:
            rest = order[: self.total_size][self.start :]
            return rest[: len(rest) - len(rest) % self.num_replicas]
        rest = order[self.start :]
        padding = -len(rest) % self.num_replicas
        # DistributedSampler pads with the order's first items; with `start` a multiple of the ranks the
        # padding is the same number of the same items as the uninterrupted epoch's
        return rest + (order * math.ceil(padding / max(1, len(order))))[:padding]

    def __iter__(self):
        if not self.start:
            return super().__iter__()
        return iter(self._remaining()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        if not self.start:
            return self.num_samples
        return len(self._remaining()) // self.num_replicas
