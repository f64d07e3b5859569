"""Loader workers write `yuv.Crops` batches into shared-memory segments they reuse (`data.batch_ring`); a
segment goes back to its worker only once the consuming process has dropped the batch in it."""

import copy
import os
import types

import pytest
import torch
from torch.utils.data import Dataset

from actionlab.data import batch_ring, yuv
from actionlab.data.loader import make_loader

SEGMENTS = 5  # BatchRing's default, per worker


class _CropItems(Dataset):
    """Seeded random crops of a few sizes, as `VideoClipDataset` makes them with `resize_on=device`."""

    def __len__(self) -> int:
        return 48

    def __getitem__(self, i: int) -> dict:
        t, side = 4, 32 + 4 * (i % 5)
        g = torch.Generator().manual_seed(i)
        data = torch.randint(0, 256, (t * side * side + 2 * t * (side // 2) ** 2,), dtype=torch.uint8, generator=g)
        return {"clip": yuv.Crops(data, [(t, side, side, side // 2, side // 2)], [i % 2 == 1], 32), "label": i,
                "video_id": f"v{i}"}


def _expected(items: _CropItems, labels: torch.Tensor) -> yuv.Crops:
    return yuv.Crops.cat([items[int(i)]["clip"] for i in labels])


def _loader(items, batch_size):
    return make_loader(items, batch_size=batch_size, shuffle=False, num_workers=2, timeout_s=60, drop_last=False)


def _segments_used(loader, items, epochs: int) -> list:
    """Each batch's (worker, segment) as batches are checked and dropped; segment None: fresh memory."""
    used = []
    for _ in range(epochs):
        for batch in loader:  # each batch dropped when the next one arrives
            crops = batch["clip"]
            expected = _expected(items, batch["label"])
            assert torch.equal(crops.data, expected.data) and crops.shapes == expected.shapes
            assert crops.flips == expected.flips
            used.append((crops.lease.worker, crops.lease.segment))
    return used


def _mostly_reused(used: list) -> None:
    in_segments = [u for u in used if u[1] is not None]
    assert len(in_segments) >= 0.8 * len(used), used  # a free segment is the rule, fresh memory the exception
    assert {w for w, _ in in_segments} == {0, 1} and len(set(in_segments)) <= 2 * SEGMENTS < len(in_segments)


def test_batches_reuse_their_workers_segments_and_arrive_intact():
    items = _CropItems()
    _mostly_reused(_segments_used(_loader(items, batch_size=3), items, epochs=2))  # 16 batches an epoch


def test_batches_a_consumer_keeps_are_never_overwritten_and_their_segments_come_back():
    items = _CropItems()
    loader = _loader(items, batch_size=2)  # 24 batches an epoch
    kept = list(loader)  # all held: no segment comes back during the epoch
    assert all(torch.equal(b["clip"].data, _expected(items, b["label"]).data) for b in kept)
    leases = [b["clip"].lease for b in kept]
    in_segments = [lease for lease in leases if lease.segment is not None]
    assert len(in_segments) == len(set(in_segments)) == 2 * SEGMENTS  # then fresh memory for the rest
    del kept, leases, in_segments
    _mostly_reused(_segments_used(loader, items, epochs=1))


def test_a_leased_batch_goes_on_as_a_copy(monkeypatch):
    """Pickled in the loader worker, a batch keeps its segment and lease; pickled again by the process it
    reached (sent on to a third one), it goes as a copy of its own, since the segment will be reused."""
    items = _CropItems()
    ring = batch_ring.BatchRing(1)
    assert yuv.Crops.cat([items[0]["clip"]], ring).lease is None  # outside a loader worker: fresh memory
    monkeypatch.setattr(batch_ring, "get_worker_info", lambda: types.SimpleNamespace(id=0))
    crops = yuv.Crops.cat([items[0]["clip"], items[1]["clip"]], ring)
    assert crops.lease == (ring.key, 0, 0, os.getpid()) and ring.busy[0].tolist() == [1, 0, 0, 0, 0]
    _, (data, *_, lease) = crops.__reduce__()  # in the worker that wrote it
    assert data is crops.data and lease == crops.lease
    reached = copy.copy(crops)
    reached.lease = crops.lease._replace(writer_pid=-1)  # as seen in the process it reached
    _, (data, *_, lease) = reached.__reduce__()
    assert lease is None and data.untyped_storage().data_ptr() != crops.data.untyped_storage().data_ptr()
    assert torch.equal(data, crops.data)


def test_a_failed_collate_gives_its_segment_back_and_a_copied_ring_is_its_own(monkeypatch):
    ring = batch_ring.BatchRing(1)
    monkeypatch.setattr(batch_ring, "get_worker_info", lambda: types.SimpleNamespace(id=0))
    odd = yuv.Crops(torch.zeros(10, dtype=torch.float32), [(1, 2, 2, 1, 1)], [False], 2)  # not uint8
    with pytest.raises(TypeError, match="cast"):
        yuv.Crops.cat([odd], ring)
    assert ring.busy[0].tolist() == [0] * SEGMENTS
    twin = copy.deepcopy(ring)  # e.g. a deep copy of the loader: its batches must not free this ring's segments
    assert twin.key != ring.key and twin.busy.is_shared()
    twin.busy[0, 0] = 1
    assert ring.busy[0, 0] == 0
