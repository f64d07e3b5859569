"""`data.engine: ray`: Ray Data tasks give the DataLoader's batches (same clips, order and bad samples)."""

import shutil

import pytest
import torch
from servers.process import needs_netns

from actionlab.data import dataset as data_dataset
from actionlab.data import loader as data_loader
from actionlab.data import manifest
from workloads import InputFormat

pytestmark = [needs_netns, pytest.mark.integration]


@pytest.fixture
def ray_driver(ray_address):
    """This process as a driver on the session's Ray cluster (disconnected before the cluster is checked idle)."""
    import ray

    ray.init(address=ray_address, logging_level="ERROR")
    yield
    ray.shutdown()


def _datasets(synth_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_dataset.parent, root)
    (root / "videos" / "move_left_001.mp4").write_bytes(b"broken")  # a bad sample in the middle
    df = manifest.read_manifest(root / "manifest.parquet")
    fmt = InputFormat(sampling="segments", num_frames=4, size_px=24, resize_px=28)
    common = dict(df=df, fmt=fmt, root=str(root), num_classes=4, scales=(1.0, 0.875), flip="on", seed=3)
    return (data_dataset.VideoClipDataset(train=True, **common),
            data_dataset.VideoClipDataset(train=False, num_clips=2, num_crops=3, **common))


@pytest.mark.parametrize("train", [True, False])
def test_ray_data_batches_equal_the_dataloaders(ray_driver, synth_dataset, tmp_path, train):
    from actionlab.data.ray_ingest import RayClipLoader

    train_set, test_set = _datasets(synth_dataset, tmp_path)
    ds = train_set if train else test_set
    sampler = torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=1, shuffle=train, seed=5)
    ray_loader = RayClipLoader(ds, sampler, batch_size=5, drop_last=False)
    torch_loader = data_loader.make_loader(ds, batch_size=5, shuffle=False, num_workers=0, timeout_s=0,
                                            sampler=sampler, drop_last=False)
    for epoch in (0, 1):  # a new epoch draws new views, the same on both paths
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        ours, theirs = list(ray_loader), list(torch_loader)
        assert len(ours) == len(theirs) == len(ray_loader) == 3
        for a, b in zip(ours, theirs):
            assert a["video_id"] == b["video_id"] and torch.equal(a["label"], b["label"])
            assert torch.equal(a["clip"], b["clip"]) and a["clip"].dtype == torch.uint8
            assert a["bad"] == b["bad"]
        bad = [pair for batch in ours for pair in batch["bad"]]
        assert [vid for vid, _ in bad] in ([], ["videos/move_left_001.mp4"])  # on whichever rank samples it


def test_bench_train_runs_both_paths_on_the_same_numbers(synth_dataset, tmp_path, ray_address):
    """`actionlab bench train --vs-plain`: the plain loop and the Ray Train run train the same model on
    the same batches (equal losses), the Ray run with `data.engine=ray` decoding in Ray Data tasks, the
    plain one through a DataLoader."""
    import json
    import subprocess
    import sys

    from servers.process import REPO, base_env

    command = [sys.executable, "-m", "actionlab", "bench", "train", "smoke", "--vs-plain", "--json",
               f"--set=data.manifest={synth_dataset}", "--set=schedule.epochs=2", "--set=clip.size_px=32",
               "--set=clip.resize_px=36", "--set=workload.params.backbone=resnet18", "--set=compute.cpus_per_worker=1",
               "--set=data.engine=ray", "--set=data.num_loader_workers=0"]
    env = base_env(ACTIONLAB_HOME=str(tmp_path / "home"), RAY_ADDRESS=ray_address)
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    plain, ray_side = out["plain"], out["ray"]
    assert len(plain["losses"]) == len(ray_side["losses"]) == 2
    assert ray_side["losses"] == pytest.approx(plain["losses"], rel=1e-5)  # one thread each: deterministic
    assert plain["steady_clips_per_s"] > 0 and ray_side["steady_clips_per_s"] > 0
