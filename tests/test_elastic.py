"""Elastic workers, in-process: what a run on fewer workers than the recipe's keeps (the global batch per
optimiser step, lr and the LR schedule's position), how the config maps onto Ray Train's ScalingConfig,
and what a run that cannot be placed says. The cluster behaviour is in test_elastic_cluster.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from actionlab.config import ConfigError, resolve
from actionlab.train import elastic, epoch, inputs, launch, resume
from actionlab.train.evaluate import stats_tensors
from workloads.layers import as_method

NUM_CLASSES = 3


class Tiny(nn.Module):
    """(B, T, C, H, W) -> (B, K): mean over time and space, then a linear layer (no batch statistics,
    so one rank's gradient depends on its own batch only, as under DDP)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, NUM_CLASSES)

    def forward(self, x):
        return self.fc(x.mean(dim=(1, 3, 4)))  # (B, C) -> (B, K)


def _batches(n: int, batch_size: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"clip": torch.randint(0, 256, (batch_size, 2, 3, 4, 4), dtype=torch.uint8, generator=g),
             "label": torch.randint(0, NUM_CLASSES, (batch_size,), generator=g), "bad": []} for _ in range(n)]


def _cfg(**over):
    sets = ["optim.lr=0.5", "optim.momentum=0.9", "optim.weight_decay=0.001", "optim.grad_clip=0.05",
            "schedule.epochs=4", "schedule.lr_schedule=cosine"] + [f"{k}={v}" for k, v in over.items()]
    return resolve({"workload": {"name": "tsm"}}, sets)


MEAN, STD = stats_tensors((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))


def _train(model, batches, cfg, *, accum_steps: int, steps_per_epoch: int, lr_scale: float = 1.0):
    method = as_method(model)
    opt = epoch.build_optimizer(cfg, method)
    sched = epoch.build_scheduler(cfg, opt, steps_per_epoch, lr_scale=lr_scale)
    epoch.train_one_epoch(epoch.TrainStep(method), batches, opt, sched, device=torch.device("cpu"), mean=MEAN,
                          std=STD, grad_clip=cfg.optim.grad_clip, accum_steps=accum_steps)
    return opt, sched


def _ddp_reference(model, batches, cfg, *, world: int, steps_per_epoch: int):
    """What DDP over `world` ranks does: rank r takes batch r of each group, the gradients are averaged
    (all-reduce), then every rank clips and steps the same way."""
    method = as_method(model)
    opt = epoch.build_optimizer(cfg, method)
    sched = epoch.build_scheduler(cfg, opt, steps_per_epoch)
    step = epoch.TrainStep(method)
    step.train()
    for start in range(0, len(batches), world):
        grads = []
        for b in batches[start:start + world]:
            opt.zero_grad(set_to_none=True)
            x = (b["clip"].float() / 255 - MEAN) / STD
            step(x, b["label"])["loss"].backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for p, *gs in zip(model.parameters(), *grads):
            p.grad = torch.stack(gs).mean(0)
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
    return opt, sched


def test_one_worker_with_accumulation_makes_the_updates_of_two():
    """The rule: 1 of 2 workers accumulates 2 batches per optimiser step, so each step is the one a
    2-worker DDP run makes (same global batch, same lr), and the schedule moves as far."""
    cfg = _cfg(**{"compute.num_workers": 2})
    batches = _batches(4, batch_size=3)
    torch.manual_seed(0)
    start = Tiny()
    ddp, elastic_run, plain = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    plan = elastic.WorldPlan(world=1, num_workers=2)
    assert (plan.accum_steps, plan.lr_scale) == (2, 1.0)

    ref_opt, ref_sched = _ddp_reference(ddp, batches, cfg, world=2, steps_per_epoch=2)
    opt, sched = _train(elastic_run, batches, cfg, accum_steps=plan.accum_steps, steps_per_epoch=2)
    _train(plain, batches, cfg, accum_steps=1, steps_per_epoch=2)  # what the run did before: 4 small steps

    for got, want in zip(elastic_run.parameters(), ddp.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert sched.last_epoch == ref_sched.last_epoch == 2  # two optimiser steps, as on two workers
    assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 2 / 8)))  # cosine, step 2 of 8
    gap = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), ddp.parameters()))
    assert gap > 1e-3, "without accumulation the updates differ: the test can tell the rules apart"


def test_a_partial_last_group_is_the_mean_of_its_batches():
    """3 batches with 2 per step: the last step sees one batch at full weight (as a last, smaller DDP
    step would), not half of it (no clipping here: it would hide the scale)."""
    cfg = _cfg(**{"compute.num_workers": 2, "optim.grad_clip": 0})
    batches = _batches(3, batch_size=2, seed=1)
    torch.manual_seed(1)
    start = Tiny()
    acc, ref = copy.deepcopy(start), copy.deepcopy(start)
    _train(acc, batches, cfg, accum_steps=2, steps_per_epoch=2)
    _ddp_reference(ref, batches, cfg, world=2, steps_per_epoch=2)  # its last group has one batch too
    for got, want in zip(acc.parameters(), ref.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_the_schedule_keeps_its_place_across_a_resize(tmp_path):
    """Steps per epoch are the full-size run's at any world size; a run resized from 4 to 3 workers
    (2 batches per step: global batch 6 x batch_size for a recipe of 4) restores the step count and
    scales lr by 6/4, from the first step after the restore."""
    cfg = _cfg(**{"compute.num_workers": 4})
    n, b = 48, 3
    full = elastic.batches_per_rank(n, b, 4)
    assert full == 4  # 12 clips per rank, 3 per batch
    assert elastic.batches_per_rank(n, b, 2) == 8 and elastic.batches_per_rank(n, b, 3) == 5
    torch.manual_seed(2)
    model = Tiny()
    # An epoch on 2 of 4 workers: 8 batches, 2 per step -> 4 optimiser steps, as at full size.
    opt, sched = _train(model, _batches(8, b, seed=2), cfg, accum_steps=elastic.WorldPlan(2, 4).accum_steps,
                        steps_per_epoch=full)
    assert sched.last_epoch == full
    full_size = epoch.build_scheduler(cfg, epoch.build_optimizer(cfg, as_method(Tiny())), full)
    for _ in range(full):
        full_size.optimizer.step()
        full_size.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(full_size.get_last_lr()[0])

    resume.save(tmp_path, resume.Progress(epochs_done=1), model=model, optimizer=opt, scheduler=sched)
    plan = elastic.WorldPlan(world=3, num_workers=4)
    assert (plan.accum_steps, plan.lr_scale) == (2, 1.5)
    again = Tiny()
    opt3 = epoch.build_optimizer(cfg, as_method(again))
    sched3 = epoch.build_scheduler(cfg, opt3, full, lr_scale=plan.lr_scale)
    resume.restore(tmp_path, model=again, optimizer=opt3, scheduler=sched3)
    assert opt3.param_groups[0]["lr"] == pytest.approx(full_size.get_last_lr()[0])  # the saved run's value...
    elastic.sync_lr(sched3)
    assert opt3.param_groups[0]["lr"] == pytest.approx(1.5 * full_size.get_last_lr()[0])  # ...this world's
    assert sched3.last_epoch == full
    assert "global batch 18 (recipe: 12; lr scaled x1.5 to it)" in plan.describe(3)


def test_steps_per_rank_match_the_loaders_the_loop_builds(synth_dataset):
    cfg = resolve({"workload": {"name": "tsm"}}, [f"data.manifest={synth_dataset}", "data.batch_size=4",
                                                  "data.num_loader_workers=0", "clip.num_frames=4"])
    train_set, _ = inputs.make_datasets(cfg, launch.resolve_data(cfg))
    for world in (1, 2, 3, 4):
        loader, _ = inputs.worker_loader(cfg, train_set, train=True, rank=0, world=world)
        assert len(loader) == elastic.batches_per_rank(len(train_set), 4, world), world


def test_config_maps_onto_ray_scaling_and_is_checked():
    fixed = resolve({}, ["compute.num_workers=2"]).compute
    assert fixed.workers_range == (2, 2)
    assert elastic.scaling_kwargs(*fixed.workers_range, fixed.resize_check_s) == {"num_workers": 2}
    el = resolve({}, ["compute.num_workers=4", "compute.min_workers=1", "compute.resize_check_s=5"]).compute
    assert elastic.scaling_kwargs(*el.workers_range, el.resize_check_s) == {
        "num_workers": (1, 4), "elastic_resize_monitor_interval_s": 5.0}
    from ray.train import ScalingConfig

    assert ScalingConfig(**elastic.scaling_kwargs(1, 4, 5.0)).elasticity_enabled
    with pytest.raises(ConfigError, match=r"compute.min_workers must be between 1 and compute.num_workers=2, got 3"):
        resolve({}, ["compute.num_workers=2", "compute.min_workers=3"])
    with pytest.raises(ConfigError, match=r"compute.min_workers must be between 1 .* got 0"):
        resolve({}, ["compute.min_workers=0"])
    with pytest.raises(ConfigError, match=r"compute.num_workers must be at least 1, got 0"):
        resolve({}, ["compute.num_workers=0"])
    with pytest.raises(ConfigError, match=r"compute.resize_timeout_s must be positive"):
        resolve({}, ["compute.resize_timeout_s=0"])


def test_the_capacity_message_names_what_is_missing(monkeypatch):
    import ray

    from actionlab.train import capacity

    watch = capacity.CapacityWatch(min_workers=2, num_workers=2, resources_per_worker={"CPU": 1.0}, timeout_s=20)
    nodes = [{"NodeID": "a", "NodeName": "head", "Alive": True}, {"NodeID": "b", "NodeName": "node2", "Alive": True}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})

    class Ctx:
        run_id = "r1"

    watch.after_controller_start(Ctx())
    nodes[1]["Alive"] = False
    text = watch.message(21.0)
    assert text == ("the run needs 2 workers x {CPU: 1} (compute.num_workers=2); the cluster has 1 CPU free of 1 "
                    "after node node2 was lost; waited 21 s (compute.resize_timeout_s=20). Set "
                    "compute.min_workers=1 to go on with fewer workers, or add nodes")
    # The watch: a running group resets the clock; waiting past the timeout raises.
    watch.after_controller_state_update(None, type("RunningState", (), {})())
    watch.after_controller_state_update(None, type("RestartingState", (), {})())
    watch._waiting_since -= 25
    with pytest.raises(capacity.CapacityError, match="needs 2 workers"):
        watch.after_controller_state_update(None, type("SchedulingState", (), {})())
    assert capacity.start_timeout_s(2, 2, 20.0) == 20.0 and capacity.start_timeout_s(1, 2, 300.0) == 60.0
