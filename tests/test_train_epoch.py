"""`train_one_epoch`: the epoch core that Ray Train and `bench train --vs-plain` share, run in-process."""

import shutil

import pytest
import torch

from actionlab.config import resolve
from actionlab.train import launch, loop
from actionlab.train.evaluate import stats_tensors

from workloads import get_workload


def _setup(manifest, *, seed=0, **over):
    sets = [f"data.manifest={manifest}", "workload.params.backbone=resnet18", "clip.size_px=24",
            "clip.resize_px=28", "clip.num_frames=4", "data.batch_size=4", "data.num_loader_workers=0",
            f"seed={seed}"] + [f"{k}={v}" for k, v in over.items()]
    cfg = resolve({"workload": {"name": "tsm"}}, sets)
    data = launch.resolve_data(cfg)
    spec = get_workload("tsm")
    torch.manual_seed(cfg.seed)
    model = spec.build(cfg.workload.params, num_classes=len(data.classes),
                       num_frames=cfg.clip.num_frames)
    train_set, _ = loop.make_datasets(cfg, spec, data)
    loader, sampler = loop._loader(cfg, train_set, train=True, rank=0, world=1)
    optimizer = loop.build_optimizer(cfg, model)
    scheduler = loop.build_scheduler(cfg, optimizer, len(loader))
    mean, std = stats_tensors(spec.mean, spec.std, torch.device("cpu"))
    return cfg, model, loader, optimizer, scheduler, mean, std


def _epoch(setup, *, channels_last=False, log=None, on_bad=None):
    cfg, model, loader, optimizer, scheduler, mean, std = setup
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = loop.TrainStep(model)
    return loop.train_one_epoch(step, loader, optimizer, scheduler, device=torch.device("cpu"), mean=mean, std=std,
                                grad_clip=cfg.optim.grad_clip, channels_last=channels_last, log=log,
                                on_bad=on_bad)


def test_an_epoch_trains_counts_clips_and_names_bad_samples(synth_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_dataset.parent, root)
    (root / "videos" / "move_up_002.mp4").write_bytes(b"")  # a training video that cannot load
    setup = _setup(root / "manifest.parquet")
    before = {k: v.clone() for k, v in setup[1].state_dict().items()}
    lines, met = [], []
    stats = _epoch(setup, log=lambda i, n, st: lines.append((i, n, st.seen)), on_bad=met.extend)
    assert stats.seen == 16 - 1 and [vid for vid, _ in stats.bad] == ["videos/move_up_002.mp4"]
    assert met == stats.bad  # handed over batch by batch, as met (the loop prints them: train/bad_samples.py)
    assert "empty" in stats.bad[0][1]
    assert torch.isfinite(torch.tensor(stats.loss)) and stats.seconds >= stats.step_time_s > 0
    assert lines[-1] == (4, 4, 15) and stats.clips_per_s == pytest.approx(15 / stats.seconds)
    changed = [k for k, v in setup[1].state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed  # the optimiser stepped


def test_channels_last_trains_the_same_numbers(synth_dataset):
    plain = _epoch(_setup(synth_dataset))
    last = _epoch(_setup(synth_dataset), channels_last=True)
    assert last.seen == plain.seen
    assert last.loss == pytest.approx(plain.loss, rel=1e-4)
