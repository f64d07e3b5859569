"""Loader workers write `yuv.Crops` batches into shared-memory segments they reuse (`data.batch_ring`); a
segment goes back to its worker only once the consuming process has dropped the batch in it."""

import types

import torch
from torch.utils.data import Dataset

from actionlab.data import batch_ring, yuv
from actionlab.data.loader import make_loader

SEGMENTS = 4  # BatchRing's default, per worker


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


def test_batches_reuse_their_workers_segments_and_arrive_intact():
    items = _CropItems()
    loader = _loader(items, batch_size=3)  # 16 batches an epoch
    leases = []
    for _ in range(2):
        for batch in loader:  # each batch dropped when the next one arrives
            crops = batch["clip"]
            expected = _expected(items, batch["label"])
            assert torch.equal(crops.data, expected.data) and crops.shapes == expected.shapes
            assert crops.flips == expected.flips
            leases.append(crops.lease)
    leased = [lease for lease in leases if lease is not None]
    assert len(leased) >= 0.8 * len(leases), leases  # a free segment is the rule, fresh memory the exception
    used = {lease[1:] for lease in leased}  # (worker, segment)
    assert {w for w, _ in used} == {0, 1} and len(used) <= 2 * SEGMENTS < len(leased)


def test_batches_a_consumer_keeps_are_never_overwritten():
    items = _CropItems()
    kept = list(_loader(items, batch_size=2))  # 24 batches, all held: no segment comes back
    assert all(torch.equal(b["clip"].data, _expected(items, b["label"]).data) for b in kept)
    leased = [b["clip"].lease for b in kept if b["clip"].lease is not None]
    assert len(leased) == 2 * SEGMENTS and len(set(leased)) == len(leased)  # then fresh memory for the rest


def test_a_leased_batch_goes_on_as_a_copy(monkeypatch):
    """Pickled in the loader worker, a batch keeps its segment and lease; pickled again by the process it
    reached (sent on to a third one), it goes as a copy of its own, since the segment will be reused."""
    items = _CropItems()
    ring = batch_ring.BatchRing(1)
    assert yuv.Crops.cat([items[0]["clip"]], ring).lease is None  # outside a loader worker: fresh memory
    worker = types.SimpleNamespace(id=0)
    monkeypatch.setattr(batch_ring, "get_worker_info", lambda: worker)
    monkeypatch.setattr(yuv, "get_worker_info", lambda: worker)
    crops = yuv.Crops.cat([items[0]["clip"], items[1]["clip"]], ring)
    assert crops.lease == (ring.key, 0, 0) and ring.busy[0].tolist() == [1, 0, 0, 0]
    _, (data, *_, lease) = crops.__reduce__()
    assert data is crops.data and lease == crops.lease
    monkeypatch.setattr(yuv, "get_worker_info", lambda: None)
    _, (data, *_, lease) = crops.__reduce__()
    assert lease is None and data.untyped_storage().data_ptr() != crops.data.untyped_storage().data_ptr()
    assert torch.equal(data, crops.data)
