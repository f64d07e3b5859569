"""SV-Mix's own logic: mask shapes and ranges, label ratios, the EMA, the selection module's optimiser."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from workloads import get_workload
from workloads.svmix import (
    SelectionModule,
    mask_to_clip,
    saliency_ratio,
    selection_module_from_official,
    smooth_one_hot,
)

K = 5


@pytest.fixture(scope="module")
def tsm_svmix():
    torch.manual_seed(0)
    model = get_workload("svmix").build(
        {"backbone_params": {"backbone": "resnet18"}, "ema_momentum": 0.9}, num_classes=K, num_frames=4
    )
    return model.train()


def _clips(b=4, t=4, px=32):
    torch.manual_seed(1)
    return torch.randn(b, t, 3, px, px), torch.arange(b) % K


@pytest.mark.parametrize("spatial", [True, False])
def test_selection_mask_shapes_ranges_and_mode(spatial):
    torch.manual_seed(0)
    feats = torch.randn(3, 16, 2, 4, 4)  # (B, D, T', h, w)
    module = SelectionModule(16, query_dim=8)
    perm = torch.tensor([2, 0, 1])
    m_b = module(feats, 0.3, perm, spatial=spatial)
    assert m_b.shape == (3, 2, 4, 4)
    assert ((m_b > 0) & (m_b < 1)).all()  # soft, never a hard cut
    if not spatial:  # one weight per frame
        assert torch.equal(m_b, m_b[..., :1, :1].expand_as(m_b))
    clip_mask = mask_to_clip(m_b, torch.Size((3, 8, 3, 64, 64)))  # T' = 2 -> T = 8 repeats
    assert clip_mask.shape == (3, 8, 1, 64, 64)
    assert torch.equal(clip_mask[:, 0], clip_mask[:, 3])
    assert torch.equal(clip_mask[:, 0, 0, :16, :16], m_b[:, 0, :1, :1].expand(3, 16, 16))  # 16-px cells


def test_selection_starts_near_plain_mixup():
    """Value weight 4 on the lambda channel: with featureless input m_B = sigmoid(-4 (lambda - 0.5))."""
    module = SelectionModule(8, query_dim=4)
    m_b = module(torch.zeros(2, 8, 1, 2, 2), 0.9, torch.tensor([1, 0]), spatial=True)
    assert torch.allclose(m_b, torch.sigmoid(torch.tensor(-1.6)).expand_as(m_b), atol=1e-6)


def test_official_selection_module_from_the_trainer_checkpoint():
    """The official trainer keeps MB_st under `mix_bloc_s` (DDP-unwrapped; a wrapped save has `module.`)."""
    source = SelectionModule(8, query_dim=4)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    loaded = selection_module_from_official({"mix_bloc_s": state, "iteration": 10})
    assert loaded.query.out_features == 4 and loaded.query.in_features == 8 + 1
    assert all(torch.equal(a, b) for a, b in zip(source.parameters(), loaded.parameters()))
    with pytest.raises(ValueError, match="under 'mix_bloc_s'"):
        selection_module_from_official({"model": {"conv1.weight": torch.zeros(1)}})


def test_saliency_ratio_and_targets_are_convex():
    torch.manual_seed(0)
    feats = torch.randn(4, 8, 2, 3, 3)
    perm = torch.tensor([1, 2, 3, 0])
    const = torch.full((4, 2, 3, 3), 0.7)
    assert torch.allclose(saliency_ratio(feats, const, perm), torch.full((4,), 0.7))  # constant mask: lambda
    share = torch.rand(4, 2, 3, 3)
    lam_sal = saliency_ratio(feats, share, perm)
    assert ((lam_sal >= 0) & (lam_sal <= 1)).all()
    y = smooth_one_hot(torch.tensor([0, 1, 2, 3]), K, 0.1)
    target = lam_sal[:, None] * y + (1 - lam_sal[:, None]) * y[perm]
    assert torch.allclose(target.sum(1), torch.ones(4))
    assert torch.allclose(y.max(1).values, torch.full((4,), 0.9 + 0.1 / K))


def test_training_step_stats_ema_and_selector_update(tsm_svmix):
    model = tsm_svmix
    clips, labels = _clips()
    # The platform's optimiser sees exactly the online network's parameters.
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.online.parameters()}
    selector_before = [p.clone() for p in model.selector.parameters()]
    ema_before = [p.clone() for p in model.ema.parameters()]
    out = model.training_step(clips, labels)
    stats = ("loss_task", "loss_policy", "loss_ratio", "mix_lambda", "mix_lambda_sal_err", "policy_ratio_err")
    for key in stats:
        assert out[key].numel() == 1 and torch.isfinite(out[key])
    out["loss"].backward()
    assert all(p.grad is None for p in model.ema.parameters())  # the policy loss never reaches the EMA weights
    model.on_step_end()
    assert any(not torch.equal(a, b) for a, b in zip(selector_before, model.selector.parameters()))
    assert any(b.abs().sum() > 0 for n, b in model.selector.named_buffers() if n.startswith("momentum_"))
    for before, ema, online in zip(ema_before, model.ema.parameters(), model.online.parameters()):
        assert torch.allclose(ema, 0.9 * before + 0.1 * online, atol=1e-6)


def test_ema_is_evaluated_first_and_its_dropout_stays_off(tsm_svmix):
    model = tsm_svmix
    assert list(model.eval_variants()) == ["ema", "online"]
    model.train()
    assert not model.ema.dropout.training and model.online.dropout.training
    model.eval()
    clips, _ = _clips(b=2)
    with torch.no_grad():
        assert torch.equal(model(clips), model.ema(clips))
    model.train()


def test_extreme_lambda_is_plain_mixup_with_lambda_labels():
    model = get_workload("svmix").build(
        {"backbone_params": {"backbone": "resnet18"}, "fixed_lambda": 0.95, "switch_prob": 0.0},
        num_classes=K, num_frames=4,
    )
    out = model.training_step(*_clips())
    assert float(out["mix_lambda"]) == pytest.approx(0.95)
    assert float(out["mix_lambda_sal_err"]) < 1e-6  # constant masks: the saliency ratio is lambda itself


def test_r2plus1d_backbone_with_fewer_feature_frames():
    model = get_workload("svmix").build(
        {"backbone_workload": "r2plus1d", "backbone_params": {"depth": 18, "width_mult": 0.125}},
        num_classes=K, num_frames=8,
    )
    out = model.training_step(*_clips(b=2, t=8))  # T' = 1 < T = 8 feature frames
    out["loss"].backward()
    model.on_step_end()
    assert torch.isfinite(out["loss_policy"])


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_baselines_mix_every_frame_alike(method):
    torch.manual_seed(3)
    model = get_workload("svmix").build(
        {"backbone_params": {"backbone": "resnet18"}, "method": method, "fixed_lambda": 0.6},
        num_classes=K, num_frames=4,
    )
    assert model.selector is None
    clips = torch.rand(2, 1, 3, 32, 32).expand(2, 4, 3, 32, 32).contiguous()  # identical frames
    seen = {}
    model.online.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    out = model.training_step(clips, torch.tensor([0, 1]))
    mixed = seen["x"]
    assert torch.equal(mixed[:, :1].expand_as(mixed), mixed)  # the same mix on every frame
    lam = float(out["mix_lambda"])
    if method == "mixup":
        assert lam == pytest.approx(0.6)
    else:  # lambda is the area actually kept (a sample paired with itself looks unchanged)
        changed = (mixed != clips).any(2).float().mean((1, 2, 3))
        assert 0.0 < lam < 1.0
        assert all(c == pytest.approx(1.0 - lam, abs=0.01) for c in changed.tolist() if c > 0)


def test_a_baselines_ema_follows_the_online_bn_statistics():
    """The baselines' EMA makes no forward pass of its own in training: without averaging the online
    model's BN statistics it would be evaluated with its initial ones."""
    torch.manual_seed(3)
    model = get_workload("svmix").build(
        {"backbone_params": {"backbone": "resnet18"}, "method": "none", "ema_momentum": 0.5, "ema_init": "copy"},
        num_classes=K, num_frames=4,
    ).train()
    clips, labels = _clips()
    model.training_step(clips + 3.0, labels)  # shifted inputs move the online BN means
    model.on_step_end()
    online = dict(model.online.named_buffers())
    for name, ema in model.ema.named_buffers():
        if name.endswith("running_mean"):
            initial = torch.zeros_like(ema)
            assert torch.allclose(ema, 0.5 * initial + 0.5 * online[name], atol=1e-6), name
        elif name.endswith("num_batches_tracked"):
            assert torch.equal(ema, online[name]) and int(ema) == 1


def test_block_lr_schedule_follows_epochs(tsm_svmix):
    model = tsm_svmix
    model.on_epoch_start(0, 55)
    assert model.block_lr_factor == 1.0
    model.on_epoch_start(30, 55)
    assert model.block_lr_factor == pytest.approx(0.1)
    model.on_epoch_start(54, 55)
    assert model.block_lr_factor == pytest.approx(0.01)


@pytest.mark.parametrize("backbone,sampling,mean", [
    ("tsm", "segments", (0.485, 0.456, 0.406)),
    ("i3d", "clip", (0.485, 0.456, 0.406)),
    ("mvitv2", "clip", (0.45, 0.45, 0.45)),  # PySlowFast's Kinetics normalisation
])
def test_svmix_samples_and_normalises_as_its_backbone(backbone, sampling, mean):
    fmt = get_workload("svmix").input_for({"backbone_workload": backbone})
    assert fmt == get_workload(backbone).input_for()
    assert (fmt.sampling, fmt.mean) == (sampling, mean)


def test_svmix_over_a_3d_backbone_gets_clip_sampling_through_the_platform(synth_dataset):
    from actionlab.config import resolve
    from actionlab.train import inputs, launch, loop

    cfg = resolve({"workload": {"name": "svmix", "params": {"backbone_workload": "mvitv2"}}},
                  [f"data.manifest={synth_dataset}", "clip.num_frames=4", "clip.stride=2"])
    data = launch.resolve_data(cfg)
    spec = get_workload("svmix")
    train, val = inputs.make_datasets(cfg, data)
    pre = loop.model_meta(cfg, spec, data.classes).preprocessing
    assert train.fmt == val.fmt == pre  # what the model is trained on, validated on and saved with
    assert (pre.sampling, pre.num_frames, pre.stride, pre.mean, pre.std) == ("clip", 4, 2, (0.45,) * 3, (0.225,) * 3)
    cfg = resolve({"workload": {"name": "svmix"}}, [f"data.manifest={synth_dataset}"])
    assert inputs.make_datasets(cfg, launch.resolve_data(cfg))[0].fmt.sampling == "segments"  # tsm backbone
