"""Training learns: the epoch core fits what only a temporal model can fit, and every smoke recipe fits a
fixed batch. The numbers asserted were measured on CPU with one torch thread and fixed seeds."""

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from actionlab.config import read_recipe, resolve, shipped_recipes
from actionlab.data import synthetic
from actionlab.train import epoch, inputs, launch
from actionlab.train.evaluate import normalise, stats_tensors
from workloads import get_workload
from workloads.layers import as_method

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """move_left vs move_right where every move_right video is a move_left video played backwards."""
    return synthetic.synthesize(tmp_path_factory.mktemp("twins"), num_classes=2, videos_per_class=16, num_frames=4,
                                size_px=32, seed=0, val_fraction=0.25, num_procs=1, reversed_twins=True)


def _train_on_twins(workload: str, manifest, *, epochs: int = 6) -> dict:
    """Trains `workload` (ResNet-10t, random init) through the loop's own datasets, loaders, optimiser and
    schedule; returns the last epoch's loss and top-1 on the train split (eval protocol) and on val."""
    # 4 segments of a 4-frame video: every frame, in order; no flip or scale jitter, so a frame-order-blind
    # model sees the same frames for both twins.
    sets = [f"data.manifest={manifest}", "workload.params.backbone=resnet10t", "clip.num_frames=4", "clip.size_px=32",
            "clip.resize_px=32", "clip.scales=[1.0]", "data.flip=off", "data.batch_size=8",
            "data.num_loader_workers=0", "optim.name=adamw", "optim.lr=0.001", "optim.weight_decay=0.0001",
            f"schedule.epochs={epochs}", "schedule.warmup_epochs=0", "schedule.lr_schedule=cosine", "seed=0"]
    cfg = resolve({"workload": {"name": workload}}, sets)
    ctx = launch.resolve_data(cfg)
    spec = get_workload(workload)
    torch.manual_seed(cfg.seed)
    method = as_method(spec.build(cfg.workload.params, num_classes=2, num_frames=4, weights=False))
    train_set, val_set = inputs.make_datasets(cfg, ctx)
    _, train_as_val = inputs.make_datasets(cfg, dataclasses.replace(ctx, val_split="train"))
    loader, sampler = inputs.worker_loader(cfg, train_set, train=True, rank=0, world=1)
    optimizer = epoch.build_optimizer(cfg, method)
    scheduler = epoch.build_scheduler(cfg, optimizer, len(loader))
    mean, std = stats_tensors(spec.mean, spec.std, CPU)
    step = epoch.TrainStep(method)
    for e in range(epochs):
        sampler.set_epoch(e)
        train_set.set_epoch(e)
        stats = epoch.train_one_epoch(step, loader, optimizer, scheduler, device=CPU, mean=mean, std=std)

    def top1(dataset) -> float:
        scored = epoch.validate(method, inputs.worker_loader(cfg, dataset, train=False, rank=0, world=1)[0], device=CPU,
                                mean=spec.mean, std=spec.std, num_classes=2)
        return scored[""].top1

    return {"loss": stats.loss, "train_top1": top1(train_as_val), "val_top1": top1(val_set)}


def test_twins_differ_only_by_frame_order(twins):
    manifest = pd.read_parquet(twins)
    left = manifest[manifest.label == 0].reset_index(drop=True)
    right = manifest[manifest.label == 1].reset_index(drop=True)
    assert list(left.split) == list(right.split)  # a twin never sits in the other split
    assert np.array_equal(synthetic.render_clip("move_right", seed=(0, 0, 3), num_frames=4, size_px=32),
                          synthetic.render_clip("move_left", seed=(0, 0, 3), num_frames=4, size_px=32)[::-1])


def test_tsm_learns_frame_order(twins):
    got = _train_on_twins("tsm", twins)
    # measured: loss 0.067, top-1 1.0 on train and val
    assert got["loss"] < 0.2
    assert got["train_top1"] >= 0.9 and got["val_top1"] >= 0.9


def test_tsn_cannot_learn_frame_order(twins):
    got = _train_on_twins("tsn", twins)
    # measured: loss 0.71 (ln 2 = 0.69: no fit), top-1 0.5 on train and val. A twin's frames are the same
    # set, so the mean of per-frame logits is the same (up to H.264 noise) for both labels.
    assert got["loss"] > 0.6
    assert got["train_top1"] <= 0.6 and got["val_top1"] <= 0.6


# Optimiser steps each smoke recipe needs to halve its loss on a fixed batch (measured: loss after / before).
FIT_STEPS = {
    "smoke": 8,  # 1.383 -> 0.06
    "afnet_smoke": 12,  # 1.386 -> 0.013
    "h2cn_smoke": 12,  # 1.381 -> 0.136
    "hsar_smoke": 24,  # 1.402 -> 0.173 (its random, frozen spatial ViT makes it slow)
    "mvitv2_smoke": 12,  # 1.421 -> 0.609
    "uniformer_smoke": 12,  # 1.373 -> 0.344
}
# Smoke recipes that do not halve it within a few steps, with what was measured.
NOT_FIT = {
    "sllm_smoke": "12 steps at its full lr 1e-3 (no warmup): 1.683 -> 1.451, the training loss jumping from 1.76 to 7.9 "
                  "after the first AdamW step; at lr 1e-4 it halves (1.683 -> 0.775): the recipe leans on its warmup",
    "svmix_smoke": "SV-Mix trains on mixed clips: 24 steps (30 s of CPU) only take the clean batch 1.386 -> 0.545",
    "svmix_mvitv2_smoke": "SV-Mix trains on mixed clips: 24 steps take the clean batch 1.421 -> 1.102",
    "svmix_uniformer_smoke": "SV-Mix trains on mixed clips: 24 steps take the clean batch 1.373 -> 0.749",
}


def test_every_smoke_recipe_is_fit_or_says_why_not():
    smoke = {n for n in shipped_recipes() if n == "smoke" or n.endswith("_smoke")}
    assert smoke == set(FIT_STEPS) | set(NOT_FIT)


def _fixed_batch_loss(name: str, num_steps: int) -> tuple[float, float]:
    """Cross-entropy of the recipe's model on 4 generated clips (4 classes) before and after `num_steps`
    steps of `train_one_epoch` on that same batch, with the recipe's optimiser at its full lr."""
    cfg = resolve(read_recipe(name).values)
    spec = get_workload(cfg.workload.name)
    fmt = inputs.input_format(cfg)
    frames = fmt.clip_frames
    labels = torch.arange(4)
    clips = np.stack([synthetic.render_clip(synthetic.CLASS_NAMES[k], seed=k, num_frames=frames,
                                            size_px=cfg.clip.size_px) for k in range(4)])  # (B, T, H, W, C)
    clips = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).contiguous()  # (B, T, C, H, W) uint8
    torch.manual_seed(0)
    method = as_method(spec.build(cfg.workload.params, num_classes=4, num_frames=cfg.clip.num_frames,
                                  weights=False))
    optimizer = epoch.build_optimizer(cfg, method)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    mean, std = stats_tensors(fmt.mean, fmt.std, CPU)
    x = normalise(clips, mean, std)

    def loss() -> float:
        # Train mode (batch statistics), the same dropout draw each time; on the clean batch, so methods
        # that train on mixed clips (SV-Mix) are scored on what they should have learnt.
        torch.manual_seed(1)
        with torch.no_grad():
            return float(F.cross_entropy(method(x).float(), labels))

    before = loss()
    method.on_epoch_start(0, cfg.schedule.epochs)
    batches = [{"clip": clips, "label": labels, "bad": []}] * num_steps
    epoch.train_one_epoch(epoch.TrainStep(method, label_smoothing=cfg.optim.label_smoothing), batches, optimizer,
                          scheduler, device=CPU, mean=mean, std=std, grad_clip=cfg.optim.grad_clip,
                          on_step_end=method.on_step_end)
    return before, loss()


@pytest.mark.parametrize("name", sorted(FIT_STEPS))
def test_smoke_recipe_fits_a_fixed_batch(name):
    before, after = _fixed_batch_loss(name, FIT_STEPS[name])
    assert before == pytest.approx(np.log(4), abs=0.1)  # a fresh model: chance level
    assert after < 0.5 * before, f"{name}: loss {before:.3f} -> {after:.3f} in {FIT_STEPS[name]} steps"


@pytest.mark.xfail(strict=True, reason=NOT_FIT["sllm_smoke"])
def test_sllm_smoke_fits_a_fixed_batch():
    before, after = _fixed_batch_loss("sllm_smoke", 12)
    assert after < 0.5 * before
