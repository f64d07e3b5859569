"""MViTv2-S: compute pinned to the paper, PySlowFast's layout, the relative-position bias, weight loading.

The logits were checked equal to PySlowFast's `MViT` (MVITv2_S_16x4.yaml, random weights copied
through `load_official`) outside the project: max |diff| 1.3e-6 on logits of magnitude 1.9.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from actionlab.flops import workload_compute
from workloads import get_workload
from workloads.mvitv2 import PoolingAttention, _offsets

TINY = get_workload("mvitv2").tiny


def test_mvitv2_s_16x4_matches_the_paper():
    compute = workload_compute("mvitv2", num_frames=16, size_px=224, num_classes=400)
    assert compute.params == 34_537_744  # PySlowFast's MViT with MVITv2_S_16x4.yaml, counted there
    assert compute.params == pytest.approx(34.5e6, rel=0.005)  # the paper's K400 table
    assert compute.gmacs == pytest.approx(64.0, rel=0.02)


def test_stages_follow_the_official_layout():
    with torch.device("meta"):
        model = get_workload("mvitv2").build({}, num_classes=400, num_frames=16)
    widths = [b.mlp.fc2.out_features for b in model.blocks]
    heads = [b.attn.num_heads for b in model.blocks]
    assert widths == [96] + [192] * 2 + [384] * 11 + [768] * 2
    assert heads == [1] + [2] * 2 + [4] * 11 + [8] * 2
    kv = [tuple(b.attn.pool_k.stride) for b in model.blocks]
    assert kv == [(1, 8, 8)] * 1 + [(1, 4, 4)] * 2 + [(1, 2, 2)] * 11 + [(1, 1, 1)] * 2
    # queries are pooled in every block (stride 1 outside the stage starts), the skip only at stage starts
    assert all(b.attn.pool_q is not None for b in model.blocks)
    assert [i for i, b in enumerate(model.blocks) if b.pool_skip is not None] == [1, 3, 14]
    # relative tables sized from the block's input grid: 56 -> 28 (q stride 2) vs kv 56 / 4 = 14
    assert tuple(model.blocks[1].attn.rel_pos_h.shape) == (2 * 28 - 1, 96)
    assert tuple(model.blocks[0].attn.rel_pos_t.shape) == (2 * 8 - 1, 96)


def test_feature_map_shrinks_by_the_query_strides():
    model = get_workload("mvitv2").build(TINY, num_classes=5, num_frames=4).eval()
    feats = model.forward_features(torch.randn(2, 4, 3, 32, 32))
    assert feats.shape == (2, 64, 2, 2, 2)  # (B, D, T', h, w): 8x8 tokens pooled twice


def test_relative_bias_equals_the_pairwise_definition():
    """Each logit (i, j) gets q_i . (R_h[h_i - h_j] + R_w[w_i - w_j] + R_t[t_i - t_j]) on the finer grid."""
    torch.manual_seed(0)
    attn = PoolingAttention(
        8, 8, input_size=(4, 4, 4), num_heads=2, qkv_bias=True, kernel_q=(3, 3, 3), kernel_kv=(3, 3, 3),
        stride_q=(1, 2, 2), stride_kv=(2, 1, 1), rel_pos_spatial=True, rel_pos_temporal=True, residual_pooling=True,
    )
    q_thw, k_thw = (4, 2, 2), (2, 4, 4)
    q = torch.randn(1, 2, 1 + 16, 4)
    with torch.no_grad():
        bias = attn._rel_bias(q, q_thw, k_thw)
    q_pos = [(t, h, w) for t in range(4) for h in range(2) for w in range(2)]
    k_pos = [(t, h, w) for t in range(2) for h in range(4) for w in range(4)]

    def index(qi, ki, q_len, k_len):  # distance on the finer grid, offset to be >= 0
        qr, kr = max(k_len / q_len, 1.0), max(q_len / k_len, 1.0)
        return int(qi * qr - ki * kr + (k_len - 1) * kr)

    for n in range(2):
        for i, (qt, qh, qw) in enumerate(q_pos):
            for j, (kt, kh, kw) in enumerate(k_pos):
                rel = (  # (C,)
                    attn.rel_pos_h[index(qh, kh, 2, 4)]
                    + attn.rel_pos_w[index(qw, kw, 2, 4)]
                    + attn.rel_pos_t[index(qt, kt, 4, 2)]
                )
                expected = (q[0, n, 1 + i] * rel.detach()).sum().item()
                assert bias[0, n, i, j].item() == pytest.approx(expected, abs=1e-5)
    assert _offsets(2, 4, "cpu").max() < attn.rel_pos_h.shape[0]


def test_residual_pooling_skips_the_cls_token():
    torch.manual_seed(0)
    kwargs = dict(
        input_size=(2, 4, 4), num_heads=1, qkv_bias=True, kernel_q=(3, 3, 3), kernel_kv=(3, 3, 3),
        stride_q=(1, 2, 2), stride_kv=(1, 2, 2), rel_pos_spatial=False, rel_pos_temporal=False,
    )
    with_res = PoolingAttention(8, 8, residual_pooling=True, **kwargs)
    without = PoolingAttention(8, 8, residual_pooling=False, **kwargs)
    without.load_state_dict(with_res.state_dict())
    x = torch.randn(1, 1 + 32, 8)
    (a, thw), (b, _) = with_res(x, (2, 4, 4)), without(x, (2, 4, 4))
    assert thw == (2, 2, 2) and a.shape == (1, 1 + 8, 8)
    assert torch.allclose(a[:, 0], b[:, 0]) and not torch.allclose(a[:, 1:], b[:, 1:])


def test_other_crop_sizes_interpolate_the_tables():
    model = get_workload("mvitv2").build(TINY, num_classes=5, num_frames=4).eval()
    assert model(torch.randn(1, 4, 3, 48, 48)).shape == (1, 5)


def test_official_checkpoint_loads_and_mismatch_lists_keys(tmp_path):
    spec = get_workload("mvitv2")
    torch.manual_seed(0)
    source = spec.build(TINY, num_classes=5, num_frames=4).eval()
    path = tmp_path / "checkpoint_epoch_00200.pyth"
    torch.save({"model_state": source.state_dict(), "epoch": 200}, path)  # PySlowFast's layout
    loaded = spec.build({**TINY, "pretrained": str(path)}, num_classes=5, num_frames=4).eval()
    clips = torch.randn(1, 4, 3, 32, 32)
    assert torch.equal(source(clips), loaded(clips))
    state = source.state_dict()
    state["blocks.0.attn.rel_pos_x"] = state.pop("blocks.0.attn.rel_pos_t")
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \['blocks.0.attn.rel_pos_t'\]; unexpected \['blocks.0.attn.rel_pos_x'\]"):
        spec.build({**TINY, "pretrained": str(path)}, num_classes=5, num_frames=4)


def test_too_small_clip_names_the_fix():
    with pytest.raises(ValueError, match="at least 2 frames"):
        get_workload("mvitv2").build(TINY, num_classes=5, num_frames=1)


def test_svmix_hooks_the_last_block_before_the_norm():
    torch.manual_seed(0)
    model = get_workload("svmix").build(
        {"backbone_workload": "mvitv2", "backbone_params": TINY}, num_classes=5, num_frames=4
    )
    assert model.selector.query.in_features == 64 + 1 and model.selector.query.out_features == 64  # C_q = C
    clips, labels = torch.randn(2, 4, 3, 32, 32), torch.arange(2)
    feats = model.ema.forward_features(clips)
    tokens, thw = model.ema._tokens(clips)
    assert torch.equal(feats, tokens[:, 1:].transpose(1, 2).reshape(2, 64, *thw))  # no cls, no final norm
    out = model.training_step(clips, labels)
    out["loss"].backward()
    model.on_step_end()
    assert torch.isfinite(out["loss_policy"]) and out["logits"].shape == (2, 5)
