"""Per-worker loop helpers that span ranks, on a real two-process gloo group."""

import os

import torch.distributed as dist
import torch.multiprocessing as mp

from actionlab.train.loop import _gather_distinct

BAD_BY_RANK = [
    [("videos/a.mp4", "missing"), ("videos/b.mp4", "truncated")],
    [("videos/b.mp4", "truncated"), ("videos/c.mp4", "label 9 out of range")],
]


def _gather_on_rank(rank: int, store: str, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(repr(_gather_distinct(BAD_BY_RANK[rank])))
    finally:
        dist.destroy_process_group()


def test_every_ranks_bad_samples_reach_every_rank_once(tmp_path):
    mp.spawn(_gather_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    expected = [("videos/a.mp4", "missing"), ("videos/b.mp4", "truncated"), ("videos/c.mp4", "label 9 out of range")]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == repr(expected)


def test_without_a_process_group_the_list_is_only_made_distinct():
    assert _gather_distinct([("a", "x"), ("b", "y"), ("a", "x")]) == [("a", "x"), ("b", "y")]
