"""SLLM: frame layout at any drop rate, dropped frames never encoded, restoration, classifier, loading."""

import os
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import timm
import torch

from actionlab.flops import measure
from workloads import get_workload
from workloads.sllm import SLLM, FrameRestorer, forward_clips_per_s, frame_layout

TINY = get_workload("sllm").tiny
K_CLASSES = 5


def _build(num_frames=8, **overrides):
    torch.manual_seed(0)
    return get_workload("sllm").build({**TINY, **overrides}, num_classes=K_CLASSES, num_frames=num_frames)


def _clips(num_frames=8, batch=2):
    torch.manual_seed(1)
    return torch.randn(batch, num_frames, 3, 32, 32)


def _encoder_calls(model):
    """Records (frames per call, grad enabled) for every encoder call."""
    calls = []
    model.encoder.register_forward_hook(lambda m, args, out: calls.append((args[0].shape[0], torch.is_grad_enabled())))
    return calls


def test_layout_at_half_is_the_official_even_odd_interleave():
    layout = frame_layout(16, 0.5)
    assert layout.kept == tuple(range(0, 16, 2))
    assert layout.restored == tuple(range(1, 15, 2))  # position 15 is never used, as officially
    assert layout.length == 15 and layout.max_gap == 1


@pytest.mark.parametrize("num_frames", [8, 16, 32])
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.6, 0.75])
def test_layout_drops_the_asked_fraction_and_restores_between_kept_frames(num_frames, rate):
    layout = frame_layout(num_frames, rate)
    assert abs((1 - len(layout.kept) / num_frames) - rate) <= 0.5 / num_frames + 1e-9
    assert layout.kept[0] == 0 and list(layout.kept) == sorted(set(layout.kept))
    assert set(layout.kept).isdisjoint(layout.restored)
    assert set(layout.kept) | set(layout.restored) == set(range(layout.length))
    for pos, left, frac in zip(layout.restored, layout.left, layout.frac):
        assert layout.kept[left] < pos < layout.kept[left + 1] and 0 < frac < 1


def test_drop_rate_out_of_range_is_an_error():
    with pytest.raises(ValueError, match=r"drop_rate must be in \[0, 0.75\], got 0.8"):
        frame_layout(16, 0.8)


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.75])
def test_dropped_frames_are_never_encoded_and_never_read_at_eval(rate):
    model = _build(drop_rate=rate).eval()
    layout, clips = model.layout, _clips()
    calls = _encoder_calls(model)
    with torch.no_grad():
        logits = model(clips)
        changed = clips.clone()
        dropped = [t for t in range(8) if t not in layout.kept]
        changed[:, dropped] = 1e3  # anything in the dropped frames must not matter
        assert torch.equal(model(changed), logits)
        assert torch.equal(model(clips[:, list(layout.kept)]), logits)  # the kept frames alone suffice
    assert [n for n, _ in calls] == [2 * len(layout.kept)] * 3


def test_training_encodes_targets_once_without_gradient():
    model = _build(drop_rate=0.5).train()
    calls = _encoder_calls(model)
    out = model.training_step(_clips(), torch.tensor([0, 1]))
    layout = model.layout
    assert calls == [(2 * len(layout.kept), True), (2 * len(layout.restored), False)]
    assert {"loss", "logits", "loss_ce", "loss_res", "restore_cos"} <= set(out)
    assert torch.allclose(out["loss"].detach(), out["loss_ce"] + out["loss_res"])


def test_macs_fall_with_the_drop_rate_and_the_encoder_runs_on_kept_frames_only():
    from torch.utils.flop_counter import FlopCounterMode

    gmacs = [measure(_build(drop_rate=r), (1, 8, 3, 32, 32)).gmacs for r in (0.0, 0.25, 0.5, 0.75)]
    assert gmacs == sorted(gmacs, reverse=True)
    encoder_flops = {}
    for rate in (0.0, 0.5, 0.75):
        model = _build(drop_rate=rate).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(_clips(batch=1))
        encoder_flops[rate] = sum(counter.get_flop_counts()["SLLM.encoder"].values())
    assert encoder_flops[0.5] * 2 == encoder_flops[0.0] and encoder_flops[0.75] * 4 == encoder_flops[0.0]


def test_naive_dropping_feeds_the_head_only_the_kept_frames():
    model = _build(drop_rate=0.5, restore=False).train()
    assert model.restorer is None and not any("restorer" in n for n, _ in model.named_parameters())
    header_inputs = []
    model.header.register_forward_hook(lambda m, args, out: header_inputs.append(args[0].shape))
    calls = _encoder_calls(model)
    out = model.training_step(_clips(), torch.tensor([0, 1]))
    kept = len(model.layout.kept)
    assert calls == [(2 * kept, True)]  # no restoration targets are encoded
    assert header_inputs == [(2, kept, 192)]
    assert float(out["loss_res"]) == 0.0 and torch.equal(out["loss"].detach(), out["loss_ce"])
    with_restore = measure(_build(drop_rate=0.5), (1, 8, 3, 32, 32)).gmacs
    assert measure(model.eval(), (1, 8, 3, 32, 32)).gmacs < with_restore


@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_restored_features_shapes_and_interleave(rate):
    model = _build(drop_rate=rate)
    layout = model.layout
    kept = torch.randn(2, len(layout.kept), 192)
    restored = model.restore(kept)
    assert restored.shape == (2, len(layout.restored), 192)
    assert model.restorer.use_query == (layout.max_gap > 1)
    seq = torch.cat([kept, restored], 1)[:, model.order]  # what the header sees
    assert seq.shape == (2, layout.length, 192)
    assert torch.equal(seq[:, list(layout.kept)], kept) and torch.equal(seq[:, list(layout.restored)], restored)


def test_restorer_is_symmetric_in_the_order_of_the_pair():
    torch.manual_seed(0)
    restorer = FrameRestorer(16, depth=1, num_heads=2).eval()
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    assert torch.allclose(restorer(a, b), restorer(b, a), atol=1e-6)


def _toy_trajectories(n, num_frames, dim, generator):
    """Smooth feature trajectories: a random rotation of a random-speed circle plus an offset."""
    mix = torch.randn(3, dim, generator=generator)
    t = torch.arange(num_frames, dtype=torch.float32)
    omega = 0.15 + 0.35 * torch.rand(n, 1, generator=generator)
    phase = 6.28 * torch.rand(n, 1, generator=generator)
    basis = torch.stack([torch.cos(omega * t + phase), torch.sin(omega * t + phase), torch.ones(n, num_frames)], -1)
    return 2.0 * basis @ mix  # (n, S, D)


@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_restoration_beats_zero_filling_on_a_toy_problem(rate):
    """FFRes, trained with the official KL on smooth trajectories, restores dropped features far
    better than zero-filling (which is the uniform distribution under the feature softmax)."""
    layout = frame_layout(8, rate)
    torch.manual_seed(0)
    dim = 16
    restorer = FrameRestorer(dim, depth=1, num_heads=2, use_query=layout.max_gap > 1)
    loss_of = types.SimpleNamespace(res_loss="kl")
    kl = lambda r, t: SLLM.restoration_loss(loss_of, r, t)  # noqa: E731
    left = torch.tensor(layout.left)
    frac = torch.tensor(layout.frac)

    def restore(feats):
        kept = feats[:, list(layout.kept)]
        n = feats.shape[0]
        out = restorer(kept[:, left].reshape(-1, dim), kept[:, left + 1].reshape(-1, dim),
                       frac.expand(n, -1).reshape(-1) if restorer.use_query else None)
        return out.view(n, -1, dim), feats[:, list(layout.restored)]

    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(restorer.parameters(), lr=5e-3)
    for _ in range(60):
        restored, target = restore(_toy_trajectories(16, 8, dim, gen))
        loss = kl(restored, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    restorer.eval()
    with torch.no_grad():
        restored, target = restore(_toy_trajectories(256, 8, dim, torch.Generator().manual_seed(99)))
        zero_kl = kl(torch.zeros_like(target), target)
        assert kl(restored, target) < 0.25 * zero_kl
        cos = torch.nn.functional.cosine_similarity(restored, target, dim=-1).mean()
        assert cos > 0.9


def test_text_embeddings_initialise_a_fixed_cosine_classifier(tmp_path):
    text = torch.randn(K_CLASSES, 192)
    np.save(tmp_path / "classes.npy", text.numpy())
    from safetensors.torch import save_file

    save_file({"text_embeddings": text}, str(tmp_path / "classes.safetensors"))
    for name in ("classes.npy", "classes.safetensors"):
        model = _build(text_embeddings_file=str(tmp_path / name))
        head = model.classifier
        assert "text_embeddings" in dict(head.named_buffers())  # fixed, saved with the checkpoint
        assert [n for n, _ in head.named_parameters()] == ["logit_scale"]
        video = torch.randn(3, 192)
        expected = 100.0 * torch.nn.functional.normalize(video, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t()
        assert torch.allclose(head(video), expected, atol=1e-4)


def test_text_embeddings_of_the_wrong_shape_say_what_is_expected(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 192), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(3, 192\); expected \(5, 192\)"):
        _build(text_embeddings_file=str(tmp_path / "bad.npy"))


def test_param_groups_put_the_encoder_at_the_clip_ratio(tmp_path):
    np.save(tmp_path / "t.npy", np.ones((K_CLASSES, 192), dtype=np.float32))
    model = _build(text_embeddings_file=str(tmp_path / "t.npy"))
    slow, fast = model.param_groups()
    assert slow["lr_scale"] == 0.1 and fast["lr_scale"] == 1.0
    ids = [id(p) for g in (slow, fast) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert id(model.classifier.logit_scale) in {id(p) for p in slow["params"]}


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval():
    model = _build(freeze_encoder=True).train()
    assert not model.encoder.training
    model.training_step(_clips(), torch.tensor([0, 1]))["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.restorer.parameters())


def test_encoder_loads_a_local_timm_checkpoint_key_by_key(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=2)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "vit.pth")
    model = _build(pretrained=str(tmp_path / "vit.pth"))
    assert torch.equal(model.encoder.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)

    broken = source.state_dict()
    del broken["blocks.1.norm2.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing \['blocks.1.norm2.weight'\]"):
        _build(pretrained=str(tmp_path / "broken.pth"))


def test_throughput_helper_measures_each_drop_rate():
    for rate in (0.0, 0.75):
        model = _build(drop_rate=rate)
        assert forward_clips_per_s(model, (2, 8, 3, 32, 32), iters=2, warmup=1) > 0
        assert model.training  # mode restored


def test_default_encoder_and_norms_are_the_official_ones():
    """OpenAI CLIP's QuickGELU encoder, Text4Vis' LayerNorm eps 1e-12, and the official size.

    The official VideoCLIP (ViT-B/16 visual + Transf header + FFRes + logit scale) has 114,642,945
    parameters (built from xaCheng1996/SLLM eec5f32 with random weights; ours gives its logits to 4e-7).
    Ours holds 512 more (timm's zero projection bias) and 75 * 512 fewer (FFRes uses 2 rows of its
    77-row position table) and the logit scale sits in the classifier.
    """
    from timm.layers import QuickGELU

    with torch.device("meta"):
        model = get_workload("sllm").build({}, num_classes=51, num_frames=16)
    assert isinstance(model.encoder.blocks[0].mlp.act, QuickGELU)
    norms = [m for part in (model.header, model.restorer) for m in part.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-12 for m in norms)
    body = sum(p.numel() for part in (model.encoder, model.header, model.restorer) for p in part.parameters())
    assert body == 114_642_945 - 1 + 512 - 75 * 512
