"""AFNet's own logic: skipping equals masking, MACs really saved, the RT loss, the schedules, the structure."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from workloads import get_workload

K = 5
TINY = {"layers": (2, 2, 2, 1), "width": 8}
MBV3 = {"backbone": "mobilenetv3"}


def _build(num_frames=4, **overrides):
    torch.manual_seed(0)
    return get_workload("afnet").build({**TINY, **overrides}, num_classes=K, num_frames=num_frames)


def _mbv3(num_frames=4, **overrides):
    """AF-MobileNetV3 (one fixed layout; CPU-sized at small inputs)."""
    torch.manual_seed(0)
    return get_workload("afnet").build({**MBV3, **overrides}, num_classes=K, num_frames=num_frames)


def _random_gates(model, seed=0):
    """Navigation that keeps some frames and drops others (an untrained gate keeps all): a bias that
    favours keep on a random half of the frames, and weights too small to overrule it."""
    g = torch.Generator().manual_seed(seed)
    for stage in model.backbone.stages:
        for nav in stage.navigation:
            t = nav.num_frames
            keep = torch.zeros(t, dtype=torch.bool)
            keep[torch.randperm(t, generator=g)[: t // 2]] = True
            bias = torch.stack([(~keep).float(), keep.float()], 1) * 3.0  # (T, 2): [skip, keep]
            nav.temporal.weight.data.mul_(0.01)
            nav.temporal.bias.data = bias.flatten()


def test_untrained_gate_keeps_every_frame():
    model = _build().eval()
    _, masks = model.forward_with_masks(torch.randn(2, 4, 3, 32, 32))
    assert len(masks) == 3 and all(bool(m.all()) for m in masks)


@pytest.mark.parametrize("shift, backbone, size", [(True, "resnet", 48), (False, "resnet", 48),
                                                   (True, "mobilenetv3", 96)])
def test_skipping_frames_gives_the_logits_of_masking_them(shift, backbone, size):
    # AF-MobileNetV3 at 96 px: focal maps of 12 and 6, wider than its 5x5 / 3x3 depthwise kernels, so the
    # dropped frames' border response (and its SE mean) is rebuilt from a small map, not computed whole.
    model = _build(shift=shift) if backbone == "resnet" else _mbv3(shift=shift)
    _random_gates(model)
    for m in model.modules():  # SE / fusion / head Linears that respond to their input (init: std 0.01)
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features**-0.5)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:  # running statistics of one batch: eval-mode activations stay normalised (a random deep
        m.momentum = 1.0  # MobileNet's signal otherwise fades, and a wrong skip would not reach the logits)
    model.train()
    model.training_step(torch.randn(4, 4, 3, size, size), torch.arange(4) % K)
    for m in bns:
        m.momentum = 0.1
    model.eval()
    clips = torch.randn(3, 4, 3, size, size)
    rows = []
    conv1 = model.backbone.stages[1].focal[0].branch.conv1
    handle = conv1.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    with torch.no_grad():
        model.execution = "skip"
        skipped, masks = model.forward_with_masks(clips)
        model.execution = "mask"
        masked, masks_again = model.forward_with_masks(clips)
    handle.remove()
    kept = int(masks[1].sum())
    assert 0 < kept < masks[1].numel(), "the test needs a gate that drops some frames"
    assert rows == [1, kept, masks[1].numel()]  # skip: branch(0) on one small map, then the kept frames only
    assert all(torch.equal(a, b) for a, b in zip(masks, masks_again))
    assert torch.allclose(skipped, masked, atol=1e-5, rtol=1e-4)


def test_measured_macs_fall_with_rt_and_match_the_analytic_count():
    model = _build(num_frames=8).eval()
    report = model.compute_report((1, 8, 3, 64, 64), rts=(0.25, 0.5, 1.0))
    rows = {r["rt"]: r for r in report["rows"]}
    assert rows[0.25]["measured_gmacs"] < rows[0.5]["measured_gmacs"] < rows[1.0]["measured_gmacs"]
    assert rows[1.0]["measured_gmacs"] == pytest.approx(report["fixed_gmacs"] + report["focal_gmacs"], rel=1e-6)
    for r in rows.values():  # skipping spends the analytic amount, plus branch(0) on <= 3x3 maps
        assert r["expected_gmacs_at_kept"] <= r["measured_gmacs"] <= r["expected_gmacs_at_kept"] * 1.02
    # The counter through the eval forward (what `actionlab flops` runs) agrees, with a top-k budget.
    from actionlab.flops import measure

    budget = _build(num_frames=8, eval_gating="topk", rt=0.25)
    assert measure(budget, (1, 8, 3, 64, 64)).gmacs == pytest.approx(rows[0.25]["measured_gmacs"], rel=1e-6)


def test_eval_stats_report_keep_ratio_and_macs_spent():
    model = _build()
    _random_gates(model, seed=1)
    model.on_epoch_start(0, 1)
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 4, 3, 32, 32))
    stats = model.eval_stats()
    costs = model.focal_costs((4, 3, 32, 32))
    assert 0 < stats["keep_ratio"] < 1 and {"keep_ratio/stage1", "keep_ratio/stage3"} <= set(stats)
    assert costs["fixed"] / 1e9 < stats["gmacs"] < (costs["fixed"] + sum(costs["focal"])) / 1e9


def test_rt_loss_drives_the_keep_rate_to_its_target():
    """Toy problem: only the navigation modules learn; the RT loss pulls the batch keep rate to RT."""
    model = _build(rt=0.25, lambda_rt=2.0)
    for stage in model.backbone.stages:  # an undecided gate, so the test needs few steps
        for nav in stage.navigation:
            nav.temporal.bias.data.zero_()
    model.on_epoch_start(54, 55)  # past rt_end: target = RT, tau = t1; raise tau for useful gradients
    model.temperature = 1.0
    nav_params = [p for n, p in model.named_parameters() if ".navigation." in n]
    optimiser = torch.optim.Adam(nav_params, lr=0.05)
    torch.manual_seed(0)
    clips, labels = torch.randn(4, 4, 3, 32, 32), torch.arange(4) % K
    model.train()
    rates = []
    for _ in range(40):
        out = model.training_step(clips, labels)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        rates.append(float(out["keep_ratio"]))
    assert rates[0] > 0.4
    assert abs(sum(rates[-10:]) / 10 - 0.25) < 0.1


@pytest.mark.parametrize("keep_bias, has_gradient", [(10.0, False), (1.0, True)])
def test_rt_loss_reaches_the_gate_in_a_short_run_only_from_an_undecided_start(keep_bias, has_gradient):
    """At the first epoch where the scaled schedule asks for RT (epoch index 3 of 8, tau about 0.15),
    the official keep bias of 10 leaves the hard Gumbel gate saturated: the loss has no gradient there."""
    model = _build(rt=0.25, nav_keep_bias=keep_bias).train()
    model.on_epoch_start(3, 8)
    assert model.rt_target == 0.25 and model.temperature < 0.2
    torch.manual_seed(0)
    out = model.training_step(torch.randn(4, 4, 3, 32, 32), torch.arange(4) % K)
    assert float(out["loss_rt"]) > 0
    biases = [nav.temporal.bias for stage in model.backbone.stages for nav in stage.navigation]
    grads = torch.autograd.grad(out["loss"], biases)  # CE + RT: through a saturated gate, neither reaches it
    assert (max(float(g.abs().max()) for g in grads) > 1e-3) == has_gradient


def test_schedules_scale_with_the_run():
    model = _build(rt=0.4)
    targets = [model.rt_target_at(e, 55) for e in (0, 9, 10, 14, 15, 19, 20, 54)]
    assert targets == pytest.approx([1, 1, 0.8, 0.8, 0.6, 0.6, 0.4, 0.4])
    assert [model.rt_target_at(e, 11) for e in (1, 2, 3, 4)] == pytest.approx([1, 0.8, 0.6, 0.4])
    taus = []
    for epoch in range(11):
        model.on_epoch_start(epoch, 11)
        taus.append(model.temperature)
        for _ in range(3):
            model.on_step_end()
    assert taus[0] == 1.0 and taus[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(taus[:10], taus[1:10]))


def test_temperature_after_a_resume_is_the_uninterrupted_runs():
    """A run resumed 5 optimiser steps into epoch 3 of 8 (10 steps each) anneals as one that never
    stopped: the counters come from the loop, not from the object that was lost with the worker."""
    straight, resumed = _build(rt=0.4), _build(rt=0.4)
    for epoch in range(3):
        straight.on_epoch_start(epoch, 8, steps_per_epoch=10)
        for _ in range(10):
            straight.on_step_end()
    straight.on_epoch_start(3, 8, steps_per_epoch=10)
    for _ in range(5):
        straight.on_step_end()
    resumed.on_epoch_start(3, 8, steps_per_epoch=10, start_step=5)  # a fresh object, as on a new worker
    assert resumed.temperature == straight.temperature
    for _ in range(5):
        straight.on_step_end()
        resumed.on_step_end()
        assert resumed.temperature == straight.temperature
    # and the anneal moves inside every epoch, the first included
    first = _build(rt=0.4)
    first.on_epoch_start(0, 8, steps_per_epoch=10)
    before = first.temperature
    first.on_step_end()
    assert first.temperature < before


def test_eval_gating_modes():
    model = _build()
    _random_gates(model, seed=2)
    model.eval()
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(clips), model(clips))  # argmax: deterministic
        model.eval_gating, model.rt = "topk", 0.5
        _, masks = model.forward_with_masks(clips)
        assert all(torch.equal(m.sum(1), torch.full((2,), 2.0)) for m in masks)  # exactly 2 of 4 per clip
        model.eval_gating = "gumbel"
        draws = {tuple(torch.cat([m.flatten() for m in model.forward_with_masks(clips)[1]]).tolist()) for _ in range(5)}
        assert len(draws) > 1  # the paper's noisy protocol


def test_af_resnet50_structure_on_meta():
    with torch.device("meta"):
        model = get_workload("afnet").build({}, num_classes=174, num_frames=12)
    assert model.backbone.masks_per_stage == [2, 3, 5]  # 10 navigation modules
    stage = model.backbone.stages[0]
    assert stage.focal[0].branch.conv2.groups == 2 and stage.ample[0].branch.conv2.out_channels == 32
    assert stage.navigation[0].temporal.groups == 12
    costs = model.focal_costs((12, 3, 224, 224))
    per_frame = (costs["fixed"] + sum(costs["focal"])) / 12 / 1e9
    assert 2.8 < per_frame < 3.2  # the README's 2.9 GFLOPs for AF-ResNet50 on one ImageNet image


def test_param_groups_cover_every_trainable_parameter_once():
    model = _build()
    groups = model.param_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    mults = {g["name"]: g["lr_scale"] for g in groups}
    assert mults["navigation_lr10_wd1"] == 10 and mults["linear_lr5_wd1"] == 5


# Parameter counts of the official `ops/models.py` TSN(AF_resnet50 / AF_resnet101, 174 classes), built from
# the official repository (BeSpontaneous/AFNet-pytorch f20b92e) with random weights; ours loads their
# weights strictly and gives identical logits (`checkpoint_filter_fn` in workloads/afnet.py).
OFFICIAL_PARAMS = {((3, 4, 6, 3), 8): 23_204_726, ((4, 8, 18, 3), 12): 34_201_330}
# The official `forward_calc_flops` at exactly RT of the frames kept in every block (AF-ResNet50, 224 px):
# 12 frames with TSM, 8 without. The paper's 27.9 / 31.7 (12f, RT 0.4 / 0.8) and 18.3 / 19.5 (8f,
# RT 0.25 / 0.5) are its trained gates' real keep ratios, which the paper does not give.
OFFICIAL_COUNTER_GMACS = {(12, 0.4): 27.15, (12, 0.8): 32.18, (8, 0.25): 16.85, (8, 0.5): 18.94}


@pytest.mark.parametrize("layers, num_frames", list(OFFICIAL_PARAMS))
def test_af_resnet_params_equal_the_official_model(layers, num_frames):
    with torch.device("meta"):
        model = get_workload("afnet").build({"layers": layers}, num_classes=174, num_frames=num_frames)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[(layers, num_frames)]


def test_official_shortcuts_bias_free_fusion_and_one_block_relu():
    with torch.device("meta"):
        model = get_workload("afnet").build({}, num_classes=174, num_frames=8)
    s1, s2, s3 = model.backbone.stages
    pooled_only = [s1.fusion.downsample, s2.fusion.downsample, s2.ample[0].downsample, s3.ample[0].downsample]
    assert all(len(d) == 1 and isinstance(d[0], torch.nn.AvgPool2d) for d in pooled_only)
    assert s3.fusion.downsample is None and len(s1.ample[0].downsample) == 3  # 64 -> 128: pool + conv + BN
    assert all(lin.bias is None for s in (s1, s2, s3) for lin in s.attention if isinstance(lin, torch.nn.Linear))
    assert [b.last_relu for b in s1.ample] == [True, False]
    tiny = _build()  # layers (2, 2, 2, 1): one block per branch keeps its ReLU, as the official code builds it
    assert all(b.last_relu for s in tiny.backbone.stages for b in (*s.ample, *s.focal))


@pytest.mark.parametrize("num_frames, rt", list(OFFICIAL_COUNTER_GMACS))
def test_gmacs_at_rt_match_the_official_counter(num_frames, rt):
    with torch.device("meta"):
        model = get_workload("afnet").build({}, num_classes=174, num_frames=num_frames)
    costs = model.focal_costs((num_frames, 3, 224, 224))
    gmacs = (costs["fixed"] + rt * sum(costs["focal"])) / 1e9
    assert gmacs == pytest.approx(OFFICIAL_COUNTER_GMACS[(num_frames, rt)], rel=0.01)


def test_pretrained_file_takes_official_af_resnet_names():
    """The official ImageNet AF-ResNet checkpoints use `ops/backbone/AF_ResNet.py`'s names (`layer1.list_gen.0`,
    `layer1.base_module.0`, ...): `from_official_names` maps every one onto ours (names and shapes from the
    official model, tests/fixtures/official_keys)."""
    import gzip
    import json
    from pathlib import Path

    from workloads.afnet import from_official_names

    with gzip.open(Path(__file__).parent / "fixtures" / "official_keys" / "afnet_r50_f12.json.gz", "rt") as f:
        keys = json.load(f)["keys"]
    official = {k.removeprefix("module.base_model."): torch.empty(s, device="meta") for k, s in keys.items()
                if k.startswith("module.base_model.")}
    with torch.device("meta"):
        model = get_workload("afnet").build({}, num_classes=174, num_frames=12)
    ours = from_official_names(official)
    expected = model.backbone.state_dict()
    assert sorted(ours) == sorted(expected)
    assert all(ours[k].shape == v.shape for k, v in expected.items())
    with pytest.raises(ValueError, match="not official AF-ResNet names"):
        from_official_names({"layer9.something.weight": torch.zeros(1)})


# AF-MobileNetV3 (backbone=mobilenetv3): the official `ops/models_mobilenet.py` TSN(AF_mobilenetv3, 174
# classes) built from BeSpontaneous/AFNet-pytorch f20b92e with random weights has these parameter counts;
# ours loads its weights strictly (fixtures/official_keys/afnet_mbv3_f12) and gives the same logits: max
# |diff| 8.3e-7 for logits up to 1.35 (224 px, 12 frames, BN statistics of a calibration batch, noise-free
# gates keeping 58 % of the frames; skipping and masking alike).
OFFICIAL_MBV3_PARAMS = {12: 4_507_169, 8: 4_507_049}
# Its `forward_calc_flops` (12 frames, 224 px) with exactly round(RT * 12) frames kept in every block; the
# README's SSv1 rows say 2.2 / 2.3 GFLOPs (= GMACs) at RT 0.4 / 0.8 (trained gates' own keep ratios).
OFFICIAL_MBV3_COUNTER_GMACS = {0.4: 2.1853, 0.8: 2.2824}


@pytest.fixture(scope="module")
def mbv3_meta():
    with torch.device("meta"):
        return get_workload("afnet").build(MBV3, num_classes=174, num_frames=12)


@pytest.mark.parametrize("num_frames", list(OFFICIAL_MBV3_PARAMS))
def test_af_mobilenetv3_params_equal_the_official_model(num_frames):
    with torch.device("meta"):
        model = get_workload("afnet").build(MBV3, num_classes=174, num_frames=num_frames)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_MBV3_PARAMS[num_frames]


@pytest.mark.parametrize("rt", list(OFFICIAL_MBV3_COUNTER_GMACS))
def test_af_mobilenetv3_gmacs_match_the_official_counter_and_the_paper(mbv3_meta, rt):
    costs = mbv3_meta.focal_costs((12, 3, 224, 224))
    kept = round(rt * 12) / 12
    gmacs = (costs["fixed"] + kept * sum(costs["focal"])) / 1e9
    # The official count adds the pooling layers' reads (c*h*w each); ours counts convs and Linears only.
    assert gmacs == pytest.approx(OFFICIAL_MBV3_COUNTER_GMACS[rt], rel=0.005)
    paper = {(name, rt_): g for name, _, _, rt_, g in get_workload("afnet").paper_gmacs}
    assert gmacs == pytest.approx(paper[("AF-MobileNetV3", rt)], rel=0.02)
    assert mbv3_meta.paper_backbone == "AF-MobileNetV3"


def test_af_mobilenetv3_structure(mbv3_meta):
    bb = mbv3_meta.backbone
    assert bb.masks_per_stage == [2, 3] and bb.num_features == 1280
    s2, s3 = bb.stages
    assert s2.focal[0].branch.conv1.groups == 2 and s2.focal[0].branch.conv3.groups == 2
    assert s2.focal[0].downsample[0].groups == 2 and s2.focal[1].downsample is None  # 24 -> 40, then identity
    assert s2.ample[0].branch.conv2.stride == (2, 2) and s2.ample[0].downsample is None  # plain MBv3: no shortcut
    assert s2.fusion.branch.conv2.stride == (2, 2) and s3.fusion.branch.conv2.stride == (1, 1)
    assert [lin.out_features for lin in s2.attention if isinstance(lin, torch.nn.Linear)] == [2, 40]
    assert all(lin.bias is not None for s in (s2, s3) for lin in s.attention if isinstance(lin, torch.nn.Linear))
    assert not hasattr(s2, "ample_proj")  # both branches are 40 wide: nothing to project
    assert s3.navigation[0].temporal.groups == 12 and s3.navigation[0].conv.in_channels == 40
    se = s2.focal[0].branch.se
    assert (se.fc1.in_features, se.fc1.out_features) == (72, 24)  # 72 / 4 = 18, rounded to a multiple of 8


def test_af_mobilenetv3_param_groups_follow_its_official_policy():
    model = _mbv3()
    groups = {g["name"]: {id(p) for p in g["params"]} for g in model.param_groups()}
    fast, plain = groups["linear_lr5_wd1"], groups["block_linear_lr1_wd1"]
    assert fast == {id(model.fc.weight), id(model.backbone.head_fc.weight)}
    assert groups["linear_lr10_wd0"] == {id(model.fc.bias), id(model.backbone.head_fc.bias)}
    se = model.backbone.stages[0].focal[0].branch.se.fc1
    attention = model.backbone.stages[1].attention[0]
    assert {id(se.weight), id(se.bias), id(attention.weight), id(attention.bias)} <= plain


def test_af_mobilenetv3_rejects_resnet_shape_params():
    with pytest.raises(ValueError, match=r"\['layers'\].*backbone=mobilenetv3.*drop them"):
        get_workload("afnet").build({**MBV3, "layers": (4, 8, 18, 3)}, num_classes=K, num_frames=4)
    with pytest.raises(ValueError, match=r"'backbone': 'mobilenet' is not one of \['resnet', 'mobilenetv3'\]; "
                                         r"did you mean 'mobilenetv3'"):
        get_workload("afnet").build({"backbone": "mobilenet"}, num_classes=K, num_frames=4)


def test_pretrained_file_takes_official_af_mobilenetv3_names(tmp_path):
    """The authors' ImageNet AF-MobileNetV3 checkpoint: DataParallel names of `AF_MobileNetv3.py`, whose
    `fc.0` is the 960 -> 1280 head Linear (kept) and `fc.3` the ImageNet classifier (dropped)."""
    import gzip
    import json
    from pathlib import Path

    from workloads.afnet import official_key

    model = _mbv3()
    with gzip.open(Path(__file__).parent / "fixtures" / "official_keys" / "afnet_mbv3_f12.json.gz", "rt") as f:
        official = [k.removeprefix("module.base_model.") for k in json.load(f)["keys"]]
    inverse = {official_key(k): k for k in official if not k.startswith("fc.3.")}  # ours -> official
    assert sorted(inverse) == sorted(model.backbone.state_dict())
    state = {inverse[k]: v.clone() for k, v in model.backbone.state_dict().items()}
    state.update({"fc.3.weight": torch.zeros(1000, 1280), "fc.3.bias": torch.zeros(1000)})
    path = tmp_path / "AF-MobileNetv3.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = _mbv3(pretrained=str(path))
    ours = loaded.backbone.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in model.backbone.state_dict().items())
