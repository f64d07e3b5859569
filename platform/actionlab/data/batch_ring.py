"""Shared-memory segments that a loader worker writes its batches into again and again, each handed back
by the process that consumes the batch once nothing there holds it.

A DataLoader worker's batch travels to the consuming process as shared memory: torch moves each tensor
into a fresh shared segment as it is sent, so every batch pays for a new segment whose pages fault on
first touch, and for a copy. On prepared files that is about 0.4 ms a clip, close to a tenth of the
crop loader's work. With a `BatchRing`, each worker keeps a few segments (made when first needed) and
writes a batch's bytes straight into a free one; torch sends a segment that is already shared by its
file descriptor, without copying (the consumer maps it anew, which costs no copy and no zeroed pages).
The consuming process marks the segment free again once torch says its storage there is gone (a flag
per segment, in shared memory), checked as each batch of the ring arrives. When none of the worker's
segments is free the batch takes fresh memory as before: a consumer that keeps batches never sees one
overwritten, and the segments come back once it drops them.

`make_loader` gives its collate one ring; `yuv.Crops.cat` writes into it, and a `Crops` carries its
`Lease` to the consumer, where unpickling it calls `arrived`. A leased batch's `data` belongs to the
ring: a `Crops` sent on from the consumer goes as a copy (`Lease.sent_on`), but its bare `data` tensor,
sent through torch.multiprocessing or inherited by a fork, would still be the segment.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from typing import NamedTuple

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import get_worker_info

# The rings this process made, by key: the process that made a loader's ring is the one its batches reach.
_OWNED: weakref.WeakValueDictionary[str, BatchRing] = weakref.WeakValueDictionary()


class Lease(NamedTuple):
    """Which ring and worker a batch came from, and its segment (None: fresh memory)."""

    key: str
    worker: int
    segment: int | None
    writer_pid: int

    def sent_on(self) -> bool:
        """True when the batch is being pickled by a process other than the worker that wrote it into a
        segment: it must then travel as a copy, since the segment is reused once this process drops it."""
        return self.segment is not None and os.getpid() != self.writer_pid


class BatchRing:
    """Up to `num_segments` reusable shared-memory buffers for each of `num_workers` loader workers.

    A worker keeps about four busy: two batches waiting in the DataLoader's queue (its default prefetch),
    the one the consumer holds, and the one it has just dropped, seen to be gone when the next arrives;
    the fifth is slack. Picklable: the workers get the flags (shared memory) and make their own segments;
    the consuming process keeps the weak references that say when a segment is free again.
    """

    def __init__(self, num_workers: int, *, num_segments: int = 5):
        # busy[w, s] = 1 from the moment worker w writes segment s until the consumer has dropped it
        self.busy = torch.zeros(num_workers, num_segments, dtype=torch.uint8).share_memory_()
        self._own()

    def _own(self) -> None:
        """Registers this ring as one whose batches arrive in this process."""
        self.key = uuid.uuid4().hex
        _OWNED[self.key] = self
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        self._segments: dict[int, torch.Tensor] = {}  # in a worker: segment -> its shared uint8 buffer
        self._held: list[tuple[StorageWeakRef, int, int]] = []  # in the consumer: the batches it may hold
        self._lock = threading.Lock()  # the consumer unpickles in its pinning thread or its main thread

    def __getstate__(self) -> dict:
        return {"key": self.key, "busy": self.busy}

    def __setstate__(self, state: dict) -> None:
        self.key, self.busy = state["key"], state["busy"]
        self._reset_process_state()
        if self.key in _OWNED:  # a copy made in the owning process (deepcopy, pickle): a ring of its own
            self.busy = torch.zeros_like(self.busy).share_memory_()
            self._own()

    def buffer(self, nbytes: int) -> tuple[torch.Tensor, Lease] | None:
        """In a loader worker: `nbytes` (uint8) at the start of a free segment of its own, or of fresh
        memory when every segment is still held, and the batch's lease. None outside a loader worker."""
        info = get_worker_info()
        if info is None or info.id >= self.busy.shape[0]:
            return None
        flags = self.busy[info.id]
        free = [s for s, held in enumerate(flags.tolist()) if not held]
        if not free:  # the lease still goes along: its arrival is when the consumer looks for dropped ones
            return torch.empty(nbytes, dtype=torch.uint8), Lease(self.key, info.id, None, os.getpid())
        big_enough = [s for s in free if s in self._segments and self._segments[s].numel() >= nbytes]
        segment = big_enough[0] if big_enough else free[0]
        if segment not in big_enough:  # made or grown with room: crop sizes vary from batch to batch
            self._segments[segment] = torch.empty(nbytes + nbytes // 4, dtype=torch.uint8).share_memory_()
        flags[segment] = 1
        return self._segments[segment][:nbytes], Lease(self.key, info.id, segment, os.getpid())

    def give_back(self, lease: Lease) -> None:
        """In the worker: a segment whose batch was never sent (its collate failed) is free again."""
        if lease.segment is not None:
            self.busy[lease.worker, lease.segment] = 0

    def _arrived(self, storage: torch.UntypedStorage, lease: Lease) -> None:
        with self._lock:
            if lease.segment is not None:
                self._held.append((StorageWeakRef(storage), lease.worker, lease.segment))
            held = []
            for ref, worker, segment in self._held:
                # Gone means unmapped here: nothing in this process can read it any more. The flag's store
                # follows that unmapping (a system call), and the worker writes only after reading the flag.
                if ref.expired():
                    self.busy[worker, segment] = 0
                else:
                    held.append((ref, worker, segment))
            self._held = held


def arrived(lease: Lease, data: torch.Tensor) -> None:
    """In the consuming process, as a batch of the ring arrives: watch `data`'s storage (when it is a
    segment), and hand back the segments of the batches dropped since. In a process that did not make
    the ring (a loader built in one process and iterated in another) its segments stay held and its
    workers use fresh memory."""
    ring = _OWNED.get(lease.key)
    if ring is not None:
        ring._arrived(data.untyped_storage(), lease)
