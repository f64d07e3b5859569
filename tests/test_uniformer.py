"""UniFormer-S: compute pinned to the paper, the local/global layout, official and ImageNet weight loading.

The logits were checked equal to the official `video_classification` Uniformer (exp/uniformer_s16x4_k400,
random weights and BN statistics copied through `load_official`) outside the project: max |diff|
3.6e-7 on logits of magnitude 1.1.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from actionlab.flops import workload_compute
from workloads import get_workload
from workloads.uniformer import GlobalBlock, LocalBlock

TINY = get_workload("uniformer").tiny


def test_uniformer_s_16x4_matches_the_paper():
    compute = workload_compute("uniformer", num_frames=16, size_px=224, num_classes=400)
    assert compute.params == 21_400_400  # the official Uniformer with exp/uniformer_s16x4_k400, counted there
    assert compute.params == pytest.approx(21.4e6, rel=0.005)  # the paper's K400 table
    assert compute.gmacs == pytest.approx(41.8, rel=0.02)


def test_local_stages_then_global_stages():
    with torch.device("meta"):
        model = get_workload("uniformer").build({}, num_classes=400, num_frames=16)
    assert [len(s) for s in (model.blocks1, model.blocks2, model.blocks3, model.blocks4)] == [3, 4, 8, 3]
    assert all(isinstance(b, LocalBlock) for b in (*model.blocks1, *model.blocks2))
    assert all(isinstance(b, GlobalBlock) for b in (*model.blocks3, *model.blocks4))
    assert [b.attn.num_heads for b in (model.blocks3[0], model.blocks4[0])] == [5, 8]  # width / head_dim 64
    assert model.blocks1[0].attn.kernel_size == (5, 5, 5) and model.blocks1[0].attn.groups == 64
    assert model.blocks3[0].pos_embed.kernel_size == (3, 3, 3) and model.blocks3[0].pos_embed.groups == 320


def test_feature_map_and_global_attention_sees_every_token():
    model = get_workload("uniformer").build(TINY, num_classes=5, num_frames=4).eval()
    clips = torch.randn(1, 4, 3, 32, 32)
    assert model.forward_features(clips).shape == (1, 32, 2, 1, 1)  # (B, D, T/2, H/32, W/32)
    block = model.blocks3[0]
    x = torch.randn(1, 32, 2, 4, 4, requires_grad=True)
    block(x)[0, :, 0, 0, 0].sum().backward()  # one output token depends on the farthest input token
    assert x.grad[0, :, 1, 3, 3].abs().sum() > 0


def _tiny_state(num_classes=5):
    torch.manual_seed(0)
    return get_workload("uniformer").build(TINY, num_classes=num_classes, num_frames=4).eval()


def test_video_checkpoint_loads_exactly(tmp_path):
    source = _tiny_state()
    path = tmp_path / "uniformer_small_k400_16x4.pth"
    torch.save({"model_state": source.state_dict()}, path)
    loaded = get_workload("uniformer").build({**TINY, "pretrained": str(path)}, num_classes=5, num_frames=4).eval()
    clips = torch.randn(1, 4, 3, 32, 32)
    assert torch.equal(source(clips), loaded(clips))


def test_imagenet_weights_are_inflated_and_the_head_replaced(tmp_path):
    image = {k: (v[:, :, 0] if v.dim() == 5 else v) for k, v in _tiny_state(num_classes=1000).state_dict().items()}
    path = tmp_path / "uniformer_small_in1k.pth"
    torch.save({"model": image}, path)
    model = get_workload("uniformer").build({**TINY, "pretrained": str(path)}, num_classes=5, num_frames=4)
    kernel = model.blocks1[0].attn.weight  # (D, 1, 5, 5, 5) from (D, 1, 5, 5)
    assert torch.allclose(kernel, image["blocks1.0.attn.weight"].unsqueeze(2).repeat(1, 1, 5, 1, 1) / 5)
    assert torch.allclose(model.patch_embed1.proj.weight.sum(2), image["patch_embed1.proj.weight"])  # 3x4x4 stem
    assert model.head.weight.shape == (5, 32)
    del image["blocks3.0.attn.qkv.weight"]
    torch.save(image, path)
    with pytest.raises(ValueError, match=r"missing \['blocks3.0.attn.qkv.weight'\]"):
        get_workload("uniformer").build({**TINY, "pretrained": str(path)}, num_classes=5, num_frames=4)


def test_svmix_hooks_the_normalised_last_stage():
    torch.manual_seed(0)
    model = get_workload("svmix").build(
        {"backbone_workload": "uniformer", "backbone_params": TINY}, num_classes=5, num_frames=4
    )
    assert model.selector.query.in_features == 32 + 1 and model.selector.query.out_features == 32  # C_q = C
    out = model.training_step(torch.randn(2, 4, 3, 32, 32), torch.arange(2))
    out["loss"].backward()
    model.on_step_end()
    assert torch.isfinite(out["loss_policy"])
