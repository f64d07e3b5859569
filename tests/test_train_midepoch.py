"""Checkpoints inside an epoch: the sampler position, exact resume of the next step, the schedule that
makes every rank checkpoint at the same step, and the progress lines of a long epoch.

The fast tests run the worker's own pieces in-process (`inputs.worker_loader`, `train_one_epoch`,
`resume.inside_epoch` / `save` / `restore` / `carried_stats`, `ResumableSampler`); the integration test
kills a Ray Train run's driver inside an epoch and reruns it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from actionlab.config import resolve
from actionlab.data.loader import ResumableSampler
from actionlab.train import epoch, inputs, launch, resume
from actionlab.train.evaluate import stats_tensors

from servers.process import MARKER_ENV, base_env, kill_driver, needs_netns, registered_checkpoint
from workloads import get_workload
from workloads.layers import as_method

# --- the sampler position -----------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_sampler_started_part_way_gives_the_rest_of_each_ranks_order(world):
    data = list(range(23))  # not a multiple of the ranks: DistributedSampler pads
    for rank in range(world):
        whole = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=7)
        ours = ResumableSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=7)
        for ep in (0, 1):
            whole.set_epoch(ep)
            ours.set_epoch(ep)
            assert list(ours) == list(whole) and len(ours) == len(whole)
            batches, batch_size = 2, 3  # 2 batches of 3 taken on every rank
            ours.set_epoch(ep, start=ours.position_after(batches, batch_size))
            assert ours.start == batches * batch_size * world
            assert list(ours) == list(whole)[batches * batch_size:] and len(ours) == len(list(ours))


def test_a_position_resumed_on_another_number_of_ranks_deals_out_the_rest_once():
    """An elastic restart (3 ranks -> 2): what the 3 ranks consumed is skipped, the rest trained once."""
    data = list(range(40))
    consumed = []
    for rank in range(3):
        s = ResumableSampler(data, num_replicas=3, rank=rank, shuffle=True, seed=1)
        s.set_epoch(4)
        consumed += list(s)[:4 * 2]  # 4 batches of 2
    start = ResumableSampler(data, num_replicas=3, rank=0, shuffle=True, seed=1).position_after(4, 2)
    rest = []
    for rank in range(2):
        s = ResumableSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=1)
        s.set_epoch(4, start=start)
        rest += list(s)
        assert len(s) == len(list(s)) == 8
    assert sorted(consumed + rest) == data


# --- exact resume of the next step ------------------------------------------------------------------


class _Recording(epoch.TrainStep):
    """TrainStep that keeps each step's loss."""

    def __init__(self, method, losses: list):
        super().__init__(method)
        self.losses = losses

    def forward(self, clips, labels):
        out = super().forward(clips, labels)
        self.losses.append(out["loss"].detach().clone())
        return out


def _setup(manifest, workers: int):
    sets = [f"data.manifest={manifest}", "workload.params.backbone=resnet18", "clip.size_px=24",
            "clip.resize_px=28", "clip.num_frames=4", "data.batch_size=2", f"data.num_loader_workers={workers}",
            "data.loader_timeout_s=120", "seed=3", "schedule.epochs=2"]
    cfg = resolve({"workload": {"name": "tsm"}}, sets)  # TSM's dropout draws from torch's RNG every step
    data = launch.resolve_data(cfg)
    spec = get_workload("tsm")
    torch.manual_seed(cfg.seed)
    model = spec.build(cfg.workload.params, num_classes=len(data.classes), num_frames=cfg.clip.num_frames)
    train_set, _ = inputs.make_datasets(cfg, data)
    loader, sampler = inputs.worker_loader(cfg, train_set, train=True, rank=0, world=1)
    method = as_method(model)
    optimizer = epoch.build_optimizer(cfg, method)
    scheduler = epoch.build_scheduler(cfg, optimizer, len(loader))
    mean, std = stats_tensors(spec.mean, spec.std, torch.device("cpu"))
    return dict(cfg=cfg, model=model, method=method, train_set=train_set, loader=loader, sampler=sampler,
                optimizer=optimizer, scheduler=scheduler, mean=mean, std=std)


def _train(s, losses, **kwargs):
    kwargs.setdefault("accum_steps", s.get("accum", 1))
    return epoch.train_one_epoch(_Recording(s["method"], losses), s["loader"], s["optimizer"], s["scheduler"],
                                 device=torch.device("cpu"), mean=s["mean"], std=s["std"],
                                 grad_clip=s["cfg"].optim.grad_clip, **kwargs)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("workers,accum", [(0, 1), (2, 1), (0, 2)])
def test_a_checkpoint_inside_an_epoch_resumes_at_exactly_the_next_steps_loss(synth_dataset, tmp_path, workers,
                                                                           accum):
    """Epoch 2 of a run, checkpointed after step 3 of 8 (4 with 2 batches per optimiser step: never inside
    an accumulation group) and crashed 2 steps later: a fresh model, optimiser, scheduler and loader
    restored from the checkpoint train the rest with the uninterrupted run's losses (bit for bit), and
    the epoch's statistics are the whole epoch's."""
    every = 3 if accum == 1 else 4
    whole = _setup(synth_dataset, workers)
    whole["accum"] = accum
    _train(whole, [])  # epoch 1: momentum, LR schedule and RNG are well under way
    whole["sampler"].set_epoch(1)
    whole["train_set"].set_epoch(1)
    expected = []
    uninterrupted = _train(whole, expected)
    assert len(expected) == 8

    run = _setup(synth_dataset, workers)
    run["accum"] = accum
    _train(run, [])
    run["sampler"].set_epoch(1)
    run["train_set"].set_epoch(1)
    schedule = resume.CheckpointSchedule(every_steps=every)
    before = resume.Progress(epochs_done=1, metrics={"val/top1": 0.25})
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()

    def after_step(step, num_steps, so_far):  # as the worker's: the loop's _checkpoint_inside, without Ray
        if step < num_steps and schedule.due(step):
            stats = so_far()
            mid = resume.inside_epoch(before, epoch=1, step=step, samples=run["sampler"].position_after(step, 2),
                                      world=1, stats_by_rank=[resume.stats_state(stats)], bad_examples=stats.bad)
            resume.save(ckpt, mid, model=run["model"], optimizer=run["optimizer"], scheduler=run["scheduler"],
                        rng_by_rank=[resume.rng_state()])
        if step == every + 2:
            raise _Crash

    interrupted = []
    with pytest.raises(_Crash):
        _train(run, interrupted, after_step=after_step)
    assert all(torch.equal(a, b) for a, b in zip(interrupted, expected[:every + 2]))

    fresh = _setup(synth_dataset, workers)
    fresh["accum"] = accum
    with torch.no_grad():  # other weights than the file's: everything must come from it
        for p in fresh["model"].parameters():
            p.normal_()
    torch.manual_seed(99)
    progress = resume.restore(ckpt, model=fresh["model"], optimizer=fresh["optimizer"],
                              scheduler=fresh["scheduler"])
    assert progress.epochs_done == 1 and progress.position == {"step": every, "samples": every * 2, "world": 1}
    assert progress.metrics == {"val/top1": 0.25}
    assert resume.checkpoint_name(progress) == f"epoch_0001_step_{every:06d}"
    rng = torch.get_rng_state()
    fresh["sampler"].set_epoch(1, start=progress.position["samples"])
    fresh["train_set"].set_epoch(1)
    assert len(fresh["loader"]) == 8 - every
    torch.manual_seed(12345)  # whatever runs between restore and the epoch, rng_state puts it back
    resumed = []
    stats = _train(fresh, resumed, start_step=progress.position["step"], rng_state=rng,
                   carried=resume.carried_stats(progress, 0, 1))
    assert len(resumed) == 8 - every
    for k, (got, want) in enumerate(zip(resumed, expected[every:]), start=every + 1):
        assert torch.equal(got, want), f"step {k}: {got.item()!r} != {want.item()!r}"
    assert stats.steps == 8 and stats.seen == uninterrupted.seen == 16
    assert stats.loss == pytest.approx(uninterrupted.loss, rel=1e-12)
    for name, p in whole["model"].state_dict().items():
        assert torch.equal(p, fresh["model"].state_dict()[name]), name
    assert fresh["scheduler"].last_epoch == whole["scheduler"].last_epoch == 16 // accum


def test_an_epoch_end_checkpoint_of_the_earlier_format_still_resumes(tmp_path):
    """A state.pt without the mid-epoch keys (written before they existed) resumes at the epoch's end."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": 2, "metrics": {"val/top1": 0.5}, "torch_rng": torch.get_rng_state(),
                "bad_examples": [["a.mp4", "empty"]], "tracking": None}, tmp_path / resume.STATE_FILE)
    got = resume.restore(tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, rank=1, world=2)
    assert got.epochs_done == 3 and got.position is None and got.bad_examples == [("a.mp4", "empty")]
    assert resume.carried_stats(got, 0, 1) is None and resume.checkpoint_name(got) == "epoch_0003"


def test_carried_statistics_follow_the_ranks():
    parts = [{"loss_sum": 6.0, "seen": 4, "bad": [["x", "empty"]], "extras_sum": {"keep": 2.0}, "data_time_s": 1.0,
              "step_time_s": 3.0, "seconds": 5.0, "steps": 2},
             {"loss_sum": 2.0, "seen": 4, "bad": [], "extras_sum": {"keep": 1.0}, "data_time_s": 2.0,
              "step_time_s": 2.0, "seconds": 6.0, "steps": 2}]
    progress = resume.Progress(epochs_done=0, position={"step": 2, "samples": 8, "world": 2}, epoch_stats=parts)
    own = resume.carried_stats(progress, 1, 2)
    assert (own.seen, own.loss, own.bad, own.steps) == (4, 0.5, [], 2)
    merged = resume.carried_stats(progress, 0, 1)  # one rank left: it carries both
    assert (merged.seen, merged.loss, merged.bad, merged.extras_sum, merged.seconds) == (8, 1.0, [("x", "empty")],
                                                                                          {"keep": 3.0}, 6.0)
    assert resume.carried_stats(progress, 1, 3) is None


# --- the schedule ------------------------------------------------------------------------------------


class _Clock:
    def __init__(self, step_s: float = 1.0):
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now


def test_minutes_are_checked_every_few_seconds_of_steps_not_every_step():
    clock = _Clock()
    schedule = resume.CheckpointSchedule(every_minutes=1.0, check_s=6.0, clock=clock)
    saved_at, checks = [], 0
    original = resume._from_rank0

    def counting(values, device):
        nonlocal checks
        checks += 1
        return original(values, device)

    resume._from_rank0 = counting
    try:
        for step in range(1, 400):
            clock.now += 0.5  # a step takes 0.5 s
            if schedule.due(step):
                saved_at.append(clock.now)
                schedule.saved()
    finally:
        resume._from_rank0 = original
    assert len(saved_at) == 3 and all(60.0 <= b - a <= 66.5 for a, b in zip([0.0, *saved_at], saved_at))
    assert checks < 400 / 10  # about one check per 6 s of 0.5 s steps, not one per step


def _schedule_on_rank(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        clock = _Clock()
        schedule = resume.CheckpointSchedule(every_minutes=1.0, check_s=6.0, clock=clock)
        saved = []
        for step in range(1, 300):
            clock.now += 0.5 if rank == 0 else 3.0  # rank 1's clock would want a checkpoint 6x as often
            if schedule.due(step):
                saved.append(step)
                schedule.saved()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(saved))
    finally:
        dist.destroy_process_group()


def test_every_rank_checkpoints_at_the_step_rank_0s_clock_picks(tmp_path):
    """Two gloo ranks whose clocks disagree: both checkpoint at the same steps, those rank 0's clock
    gives on its own."""
    import torch.multiprocessing as mp

    # fork: the ranks need nothing a fresh interpreter would give, and importing torch twice more is slow
    mp.start_processes(_schedule_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    alone, clock = [], _Clock()
    schedule = resume.CheckpointSchedule(every_minutes=1.0, check_s=6.0, clock=clock)
    for step in range(1, 300):
        clock.now += 0.5
        if schedule.due(step):
            alone.append(step)
            schedule.saved()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] == alone and len(alone) == 2


def test_steps_are_counted_in_the_epoch_and_zero_turns_both_off():
    schedule = resume.CheckpointSchedule(every_steps=50)
    assert [s for s in range(1, 200) if schedule.due(s)] == [50, 100, 150]
    off = resume.CheckpointSchedule(every_steps=0, every_minutes=0.0)
    assert not any(off.due(s) for s in range(1, 1000))


# --- progress lines ----------------------------------------------------------------------------------


def test_progress_comes_every_interval_with_clips_per_second_and_an_eta():
    """A long epoch on a fake clock (each clock read is 1 s later): a line after the first step, then
    one at least every `log_every_s`, each with clips/s over the ranks and the epoch's and run's ETA."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(3 * 2 * 2, 2))
    step_module = epoch.TrainStep(as_method(model))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    batch = {"clip": torch.zeros(4, 1, 3, 2, 2, dtype=torch.uint8), "label": torch.tensor([0, 1, 0, 1]), "bad": []}
    clock = _Clock()

    def tick():
        clock.now += 1.0
        return clock.now

    lines = []

    def log(i, n, st):
        lines.append((clock.now, epoch.progress_line(st, step=i, num_steps=n, epoch=1, epochs=3, world=2,
                                                      later_s=100.0)))

    mean = std = torch.full((1, 1, 3, 1, 1), 0.5)
    stats = epoch.train_one_epoch(step_module, [batch] * 400, optimizer, scheduler, device=torch.device("cpu"),
                                  mean=mean, std=std, log=log, log_every_s=30.0, clock=tick)
    assert stats.steps == 400 and stats.seen == 1600
    assert lines[0][1].startswith("epoch 2/3 step 1/400 ")
    times = [t for t, _ in lines]
    assert all(b - a <= 30.0 + 2.0 for a, b in zip(times, times[1:]))  # each step reads the clock twice
    assert len(lines) <= 800 / 30 + 4 + 2  # time-based, not per step
    assert lines[-1][1].startswith("epoch 2/3 step 400/400 (100%)")
    # Step 200 (a quarter): 400 s in, 2 s a step; 800 clips x 2 ranks / 400 s; 200 steps left (400 s), then
    # the last epoch's 400 steps (800 s) and a validation (100 s).
    (mid,) = [line for _, line in lines if " step 200/400 " in line]
    assert " 4.0 clips/s (data 200.0s 50%, compute 200.0s) ETA epoch 0:06:40, run 0:21:40" in mid


# --- a Ray Train run whose driver is killed inside an epoch -----------------------------------------


@needs_netns
@pytest.mark.integration
def test_a_run_killed_inside_an_epoch_resumes_from_its_mid_epoch_checkpoint(synth_dataset, tmp_path):
    import mlflow

    # Each command starts a local Ray instance of its own, as in test_train_integration's kill test: a
    # driver killed on the session's shared head leaves its job's actors and placement group there for
    # longer than the next test may wait. RAY_TMPDIR is short: unix socket paths must stay < 108 bytes.
    env = base_env(ACTIONLAB_HOME=str(tmp_path / "home"), RAY_TMPDIR=tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    args = [sys.executable, "-m", "actionlab", "train", "smoke", "--set", f"data.manifest={synth_dataset}",
            "--set", "schedule.epochs=2", "--set", "clip.num_frames=4", "--set", "clip.size_px=32",
            "--set", "clip.resize_px=32", "--set", "data.batch_size=2",
            "--set", "data.num_loader_workers=0", "--set", "schedule.checkpoint_every_steps=3",
            "--set", "tracking.run_name=midepoch", "--json"]
    storage = tmp_path / "home" / "runs" / "midepoch"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(args, env={**env, MARKER_ENV: "midepoch-driver"}, stdout=log,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        # Kill as soon as the controller has registered a checkpoint inside epoch 2 (a rerun resumes
        # from the registered one).
        while not registered_checkpoint(storage).startswith("epoch_0001_step_"):
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, f"no checkpoint inside epoch 2 in 600 s\n{log_path.read_text()[-4000:]}"
            time.sleep(0.05)
    finally:
        kill_driver(driver, "midepoch-driver")
    latest = registered_checkpoint(storage)
    first_log = log_path.read_text()
    step = int(latest.rsplit("_", 1)[1]) if "_step_" in latest else None
    assert step is not None, f"the epoch ended before the driver was killed ({latest}): {first_log[-3000:]}"
    assert "checkpoint epoch_0000_step_000003 (epoch 1 step 3): state written in" in first_log

    started = time.monotonic()
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    rerun_s = time.monotonic() - started
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    assert f"resumed from checkpoint at epoch 1/2 step {step}/8 (inside epoch 2" in rerun.stdout, rerun.stdout[-4000:]
    # The rerun trains the rest of epoch 2 only: its first progress line is the step after the checkpoint.
    assert re.search(rf"epoch 2/2 step {step + 1}/8 ", rerun.stdout), rerun.stdout[-4000:]
    assert not re.search(r"epoch 1/2 step \d+/8 \(\d+%\)", rerun.stdout)  # no progress line of epoch 1
    # Steps the killed run also printed before it died show the same running loss of the epoch.
    line = re.compile(r"epoch 2/2 step (\d+)/8 \(\d+%\) loss (\S+)")
    before, after = dict(line.findall(first_log)), dict(line.findall(rerun.stdout))
    assert all(before[k] == after[k] for k in before.keys() & after.keys()), (before, after)
    out = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert out["resumed"] and out["epoch"] == 2

    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    (run,) = c.search_runs([c.get_experiment_by_name("actionlab-smoke").experiment_id])
    assert run.info.status == "FINISHED"
    for key in ("val/top1", "train/loss", "train/clips_per_s", "data/bad_samples"):
        assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == [1, 2], key
    assert (storage / "epoch_0002" / "state.pt").is_file()
    print(f"rerun after the kill: {rerun_s:.1f} s (resumed at epoch 2 step {step}/8)")


@needs_netns
@pytest.mark.integration
def test_the_ray_loader_starts_part_way_too(synth_dataset, ray_address):
    """`data.engine=ray`: the same sampler position skips the same batches (none of them decoded)."""
    import ray

    from actionlab.data import manifest
    from actionlab.data.dataset import VideoClipDataset
    from actionlab.data.ray_ingest import RayClipLoader
    from workloads import InputFormat

    fmt = InputFormat(sampling="segments", num_frames=4, size_px=24, resize_px=28)
    ds = VideoClipDataset(df=manifest.read_manifest(synth_dataset), fmt=fmt, root=str(synth_dataset.parent),
                          num_classes=4, train=True, scales=(1.0, 0.875), flip="on", seed=3)
    sampler = ResumableSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=5)
    ray.init(address=ray_address, logging_level="ERROR")
    try:
        loader = RayClipLoader(ds, sampler, batch_size=2, drop_last=False)
        sampler.set_epoch(1)
        ds.set_epoch(1)
        whole = list(loader)
        sampler.set_epoch(1, start=sampler.position_after(2, 2))
        rest = list(loader)
    finally:
        ray.shutdown()
    assert len(rest) == len(loader) == len(whole) - 2 > 0
    for got, want in zip(rest, whole[2:]):
        assert got["video_id"] == want["video_id"] and torch.equal(got["clip"], want["clip"])
