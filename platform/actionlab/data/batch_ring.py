"""Shared-memory segments that a loader worker writes its batches into again and again, each handed back
by the process that consumes the batch once nothing there holds it.

A DataLoader worker's batch travels to the consuming process as shared memory: torch moves each tensor
into a fresh shared segment as it is sent, so every batch pays for a new segment whose pages fault on
first touch, and for a copy. On prepared files that is about 0.4 ms a clip, close to a tenth of the
crop loader's work. With a `BatchRing`, each worker keeps a few segments (made when first needed) and
writes a batch's bytes straight into a free one; torch sends a segment that is already shared by its
file descriptor, without copying. The consuming process marks the segment free again once torch says
its storage there is gone (a flag per segment, in shared memory). When none of the worker's segments is
free the batch takes fresh memory as before: a consumer that keeps batches never sees one overwritten.

`make_loader` gives its collate one ring; `yuv.Crops.cat` writes into it, and a `Crops` carries its
segment's `lease` to the consumer, where unpickling it calls `claim`.
"""

from __future__ import annotations

import threading
import uuid
import weakref

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import get_worker_info

# The rings this process made, by key: the process that made a loader's ring is the one its batches reach.
_OWNED: weakref.WeakValueDictionary[str, BatchRing] = weakref.WeakValueDictionary()

Lease = tuple  # (ring key, worker id, segment): which segment a batch's bytes are in


class BatchRing:
    """Up to `segments` reusable shared-memory buffers for each of `num_workers` loader workers.

    A worker needs about four: two batches waiting in the DataLoader's queue (its default prefetch),
    the one the consumer holds, and the one it has just dropped, seen to be gone when the next arrives.

    Picklable: the workers get the flags (shared memory) and make their own segments; the consuming
    process keeps the weak references that say when a segment is free again.
    """

    def __init__(self, num_workers: int, *, segments: int = 4):
        self.key = uuid.uuid4().hex
        # busy[w, s] = 1 from the moment worker w writes segment s until the consumer has dropped it
        self.busy = torch.zeros(num_workers, segments, dtype=torch.uint8).share_memory_()
        self._local()
        _OWNED[self.key] = self

    def _local(self) -> None:
        self._segments: dict[int, torch.Tensor] = {}  # in a worker: segment -> its shared uint8 buffer
        self._held: list[tuple[StorageWeakRef, int, int]] = []  # in the consumer: what it still holds
        self._lock = threading.Lock()  # the consumer unpickles in its pinning thread or its main thread

    def __getstate__(self) -> dict:
        return {"key": self.key, "busy": self.busy}

    def __setstate__(self, state: dict) -> None:
        self.key, self.busy = state["key"], state["busy"]
        self._local()

    def buffer(self, nbytes: int) -> tuple[torch.Tensor, Lease] | None:
        """In a loader worker: `nbytes` (uint8) at the start of a free segment of its own, and the lease
        that travels with them. None outside a loader worker or when every segment is still held."""
        info = get_worker_info()
        if info is None or info.id >= self.busy.shape[0]:
            return None
        flags = self.busy[info.id]
        free = [s for s, held in enumerate(flags.tolist()) if not held]
        if not free:
            return None
        big_enough = [s for s in free if s in self._segments and self._segments[s].numel() >= nbytes]
        segment = big_enough[0] if big_enough else free[0]
        if segment not in big_enough:  # made or grown with room: crop sizes vary from batch to batch
            self._segments[segment] = torch.empty(nbytes + nbytes // 4, dtype=torch.uint8).share_memory_()
        flags[segment] = 1
        return self._segments[segment][:nbytes], (self.key, info.id, segment)

    def _watch(self, storage: torch.UntypedStorage, worker: int, segment: int) -> None:
        with self._lock:
            self._held.append((StorageWeakRef(storage), worker, segment))
            held = []
            for ref, w, s in self._held:
                if ref.expired():  # its mapping here is gone, so nothing here can read it any more
                    self.busy[w, s] = 0
                else:
                    held.append((ref, w, s))
            self._held = held


def claim(lease: Lease, data: torch.Tensor) -> None:
    """In the consuming process, as a batch arrives: watch `data`'s storage, and hand its segment back to
    the worker once that storage is gone (checked as each later batch arrives). In any other process
    the segment stays held and its worker uses fresh memory."""
    ring = _OWNED.get(lease[0])
    if ring is not None:
        ring._watch(data.untyped_storage(), lease[1], lease[2])
