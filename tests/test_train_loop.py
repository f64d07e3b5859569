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


def _guarded_epoch(synth_dataset, root, sets=()):
    """One epoch of the worker's training loader over `synth_dataset` read from `root`; returns the
    batches the loader gave and the error that stopped the epoch (None when it ran through)."""
    import torch

    from actionlab.config import resolve
    from actionlab.train import epoch as core
    from actionlab.train import inputs, launch, loop
    from actionlab.train.evaluate import stats_tensors
    from workloads import get_workload
    from workloads.layers import as_method

    cfg = resolve({}, [f"data.manifest={synth_dataset}", f"data.root={root}", "workload.name=tsn",
                       "workload.params.backbone=resnet10t", "clip.num_frames=2", "clip.size_px=16",
                       "clip.resize_px=16", "data.batch_size=4", "data.num_loader_workers=0", *sets])
    spec = get_workload("tsn")
    ctx = launch.resolve_data(cfg)
    train_set, _ = inputs.make_datasets(cfg, ctx)
    loader, _ = inputs.worker_loader(cfg, train_set, train=True, rank=0, world=1)
    given = []

    class Counting:
        def __len__(self):
            return len(loader)

        def __iter__(self):
            for batch in loader:
                given.append(batch)
                yield batch

    method = as_method(spec.build(cfg.workload.params, num_classes=len(ctx.classes), num_frames=2))
    optimizer = core.build_optimizer(cfg, method)
    device = torch.device("cpu")
    mean, std = stats_tensors((0.5,) * 3, (0.5,) * 3, device)
    try:
        core.train_one_epoch(core.TrainStep(method), loop.BadDataGuard(cfg, Counting(), len(train_set)), optimizer,
                             core.build_scheduler(cfg, optimizer, len(loader)), device=device, mean=mean, std=std)
    except RuntimeError as err:
        return given, len(loader), err
    return given, len(loader), None


def test_a_wrong_root_stops_the_run_in_its_first_batch(synth_dataset, tmp_path):
    """Every sample missing (a wrong data.root): the run stops after the first batch, with the
    message the epoch's end gives (`_check_bad_fraction`), not after a whole epoch of nothing."""
    given, num_batches, err = _guarded_epoch(synth_dataset, tmp_path)
    assert num_batches > 1 and len(given) == 1
    assert str(err).startswith("4 of 4 samples (100.0%) could not be loaded, above data.max_bad_fraction=0.05. "
                               "First ones: videos/")
    assert "file does not exist" in str(err) and "actionlab data check MANIFEST" in str(err)


def test_bad_samples_below_the_fraction_never_stop_the_epoch(synth_dataset, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_dataset.parent, root)
    from actionlab.data import manifest

    train = manifest.select_split(manifest.read_manifest(synth_dataset), "train")
    gone = train["video"][0]
    (root / gone).unlink()  # 1 of the training samples (18)
    given, num_batches, err = _guarded_epoch(synth_dataset, root, [f"data.max_bad_fraction={1.5 / len(train)}"])
    assert err is None and len(given) == num_batches
    assert [vid for batch in given for vid, _ in batch["bad"]] == [gone]
