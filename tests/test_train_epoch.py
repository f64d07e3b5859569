"""`train_one_epoch`: the epoch core that Ray Train and `bench train --vs-plain` share, run in-process."""

import shutil

import pytest
import torch

from actionlab.config import resolve
from actionlab.train import epoch, inputs, launch, resume
from actionlab.train.evaluate import normalise, stats_tensors

from workloads import get_workload
from workloads.layers import Method, as_method


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
    train_set, _ = inputs.make_datasets(cfg, data)
    loader, sampler = inputs.worker_loader(cfg, train_set, train=True, rank=0, world=1)
    optimizer = epoch.build_optimizer(cfg, as_method(model))
    scheduler = epoch.build_scheduler(cfg, optimizer, len(loader))
    mean, std = stats_tensors(spec.mean, spec.std, torch.device("cpu"))
    return cfg, model, loader, optimizer, scheduler, mean, std


def _epoch(setup, *, channels_last=False, log=None, on_bad=None):
    cfg, model, loader, optimizer, scheduler, mean, std = setup
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = epoch.TrainStep(as_method(model))
    return epoch.train_one_epoch(step, loader, optimizer, scheduler, device=torch.device("cpu"), mean=mean, std=std,
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


def test_an_epoch_on_crops_resized_where_the_batch_is_normalised_trains_as_on_resized_clips(synth_dataset):
    """`data.resize_on=device` (the default on a GPU), here with the CPU as the device."""
    loader_side = _setup(synth_dataset, **{"data.pixels": "yuv420", "data.resize_on": "loader", "data.decoder": "pyav"})
    device_side = _setup(synth_dataset, **{"data.pixels": "yuv420", "data.resize_on": "device", "data.decoder": "pyav"})
    first = [next(iter(setup[2])) for setup in (loader_side, device_side)]
    assert type(first[1]["clip"]).__name__ == "Crops" and torch.equal(first[0]["label"], first[1]["label"])
    mean, std = loader_side[5:]
    x, y = (normalise(batch["clip"], mean, std) for batch in first)  # (B, T, 3, S, S)
    assert ((x - y) * std).abs().max() * 255 <= 3.5  # the same clips, within the uint8 kernel's rounding
    stats = _epoch(device_side)
    assert stats.seen == 16 and torch.isfinite(torch.tensor(stats.loss))


def test_a_restored_state_trains_on_exactly_as_the_original(synth_dataset, tmp_path):
    """What a worker restarted after a crash does: restore the last checkpoint, train the next epoch."""
    original = _setup(synth_dataset)
    _epoch(original)
    progress = resume.Progress(epochs_done=1, metrics={"val/top1": 0.5}, bad_examples=[("v.mp4", "empty")])
    resume.save(tmp_path, progress, model=original[1], optimizer=original[3], scheduler=original[4])
    _next_epoch(original[2])
    expected = _epoch(original).loss  # the run that did not crash

    restarted = _setup(synth_dataset)
    with torch.no_grad():  # other weights than the file's: everything must come from it
        for p in restarted[1].parameters():
            p.normal_()
    torch.manual_seed(123)
    got = resume.restore(tmp_path, model=restarted[1], optimizer=restarted[3], scheduler=restarted[4])
    assert got.epochs_done == 1 and got.metrics == {"val/top1": 0.5} and got.bad_examples == [("v.mp4", "empty")]
    assert restarted[4].last_epoch == len(restarted[2])
    _next_epoch(restarted[2])
    assert _epoch(restarted).loss == expected


def _next_epoch(loader):
    loader.sampler.set_epoch(1)
    loader.dataset.set_epoch(1)


def test_validate_scores_every_variant_the_method_names():
    class TwoHeads(Method):
        def __init__(self):
            super().__init__()
            self.right, self.wrong = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
            with torch.no_grad():  # `right` predicts the label from the first pixel; `wrong` the other one
                self.right.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
                self.wrong.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
                self.right.bias.zero_(), self.wrong.bias.zero_()

        def forward(self, clips):
            return self.right(clips.flatten(1)[:, :2])  # (B, K)

        def eval_variants(self):
            wrong = torch.nn.Sequential(torch.nn.Flatten(1), _FirstTwo(), self.wrong)
            return {"right": self, "wrong": wrong}

    labels = torch.tensor([0, 1, 1, 0])
    clips = (labels.view(4, 1, 1, 1, 1, 1) * 255).expand(4, 1, 1, 3, 2, 2).to(torch.uint8)  # (B, V, T, C, H, W)
    loader = [{"clip": clips, "label": labels, "bad": [("x.mp4", "empty")]}]
    scored = epoch.validate(TwoHeads(), loader, device=torch.device("cpu"), mean=(0.5,) * 3, std=(0.5,) * 3,
                            num_classes=2)
    assert list(scored) == ["right", "wrong"]
    assert scored["right"].top1 == 1.0 and scored["wrong"].top1 == 0.0 and scored["right"].bad == [("x.mp4", "empty")]


class _FirstTwo(torch.nn.Module):
    def forward(self, x):
        return x[:, :2]


def test_a_checkpoint_on_a_full_disk_names_the_file_and_the_fix(tmp_path):
    (tmp_path / resume.STATE_FILE).symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    with pytest.raises(OSError, match=r"could not write the checkpoint state .*state\.pt \(.*\); [\d.]+ GiB free on "
                                      r"its disk\. If that disk is full, free space there or set TMPDIR"):
        resume.save(tmp_path, resume.Progress(epochs_done=1), model=model, optimizer=optimizer, scheduler=scheduler)
