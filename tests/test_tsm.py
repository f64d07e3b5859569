"""TSM's temporal shift and its placement, checked against hand-computed values and against TSN."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from workloads import get_workload
from workloads.layers import TemporalMaxPool, TemporalShift, insert_temporal_shift, temporal_shift
from workloads.layers.backbones import create_backbone_2d

B, T, C = 2, 4, 8


def _coded_clip() -> torch.Tensor:
    """(B*T, C, 1, 1) where each entry encodes where it came from: 100*b + 10*t + c + 1 (0 = filled)."""
    b, t, c = torch.meshgrid(torch.arange(B), torch.arange(T), torch.arange(C), indexing="ij")
    return (100 * b + 10 * t + c + 1).float().reshape(B * T, C, 1, 1)


def test_shift_matches_hand_computed_values():
    out = temporal_shift(_coded_clip(), num_frames=T, fold_div=8).view(B, T, C)  # fold = 1
    # Sample 0, written out: channel 0 comes from frame t+1 (zeros at the last frame), channel 1
    # from frame t-1 (zeros at the first frame), channels 2..7 stay.
    expected0 = torch.tensor(
        [
            [11, 0, 3, 4, 5, 6, 7, 8],
            [21, 2, 13, 14, 15, 16, 17, 18],
            [31, 12, 23, 24, 25, 26, 27, 28],
            [0, 22, 33, 34, 35, 36, 37, 38],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(out[0], expected0)
    # Sample 1 is sample 0 + 100 wherever a value was moved or kept: no mixing across clips.
    assert torch.equal(out[1], torch.where(expected0 > 0, expected0 + 100, expected0))


def test_shift_fold_div_4_moves_a_quarter_each_way():
    out = temporal_shift(_coded_clip(), num_frames=T, fold_div=4).view(B, T, C)  # fold = 2
    assert out[0, 1].tolist() == [21, 22, 3, 4, 15, 16, 17, 18]
    assert out[0, 3].tolist() == [0, 0, 23, 24, 35, 36, 37, 38]
    assert out[0, 0].tolist() == [11, 12, 0, 0, 5, 6, 7, 8]


def test_shift_with_no_channels_is_identity_and_does_not_modify_input():
    x = torch.randn(B * T, C, 3, 3)
    before = x.clone()
    assert torch.equal(temporal_shift(x, num_frames=T, fold_div=C + 1), x)
    temporal_shift(x, num_frames=T, fold_div=2)
    assert torch.equal(x, before)


def test_shift_rejects_a_batch_that_is_not_whole_clips():
    with pytest.raises(ValueError, match="num_frames=4"):
        temporal_shift(torch.zeros(6, C, 1, 1), num_frames=T)


def _count_shifts(model: nn.Module) -> int:
    return sum(isinstance(m, TemporalShift) for m in model.modules())


@pytest.mark.parametrize(
    "backbone, expected",
    [
        ("resnet18", 8),  # BasicBlock, [2, 2, 2, 2]: every block
        ("resnet50", 16),  # Bottleneck, [3, 4, 6, 3]: every block
        ("resnet101", 2 + 2 + 12 + 2),  # layer3 has 23 blocks: every second block of every stage
    ],
)
def test_blockres_wraps_conv1_of_residual_blocks(backbone, expected):
    with torch.device("meta"):  # structure only: no weights are materialised
        net = create_backbone_2d(backbone)
        insert_temporal_shift(net, num_frames=8)
    assert _count_shifts(net) == expected
    assert isinstance(net.layer1[0].conv1, TemporalShift)
    assert isinstance(net.layer1[0].conv1.net, nn.Conv2d)
    shortcuts = [block.downsample for stage in (net.layer1, net.layer2) for block in stage if block.downsample is not None]
    assert shortcuts and not any(_count_shifts(s) for s in shortcuts)  # the identity path stays unshifted


def test_block_placement_wraps_whole_blocks():
    with torch.device("meta"):
        net = create_backbone_2d("resnet18")
        insert_temporal_shift(net, num_frames=8, place="block")
    assert all(isinstance(block, TemporalShift) for stage in (net.layer1, net.layer4) for block in stage)
    assert _count_shifts(net) == 8


def test_shift_rejects_unknown_place_and_non_resnet():
    with torch.device("meta"):
        net = create_backbone_2d("resnet18")
        with pytest.raises(ValueError, match="blockres"):
            insert_temporal_shift(net, num_frames=8, place="blockress")
        with pytest.raises(TypeError, match="ResNet-family"):
            insert_temporal_shift(nn.Sequential(nn.Conv2d(3, 8, 3)), num_frames=8)


def _build_pair(**tsm_params):
    """TSN and TSM with identical weights (same seed; wrapping draws no random numbers)."""
    torch.manual_seed(0)
    tsn = get_workload("tsn").build({"backbone": "resnet18"}, num_classes=5, num_frames=T)
    torch.manual_seed(0)
    tsm = get_workload("tsm").build({"backbone": "resnet18", **tsm_params}, num_classes=5, num_frames=T)
    for a, b in zip(tsn.parameters(), tsm.parameters(), strict=True):
        assert torch.equal(a, b)
    for model in (tsn, tsm):
        # timm zero-initialises the last BN of each residual branch, which would make every branch
        # (and so every shift) invisible at init; give all norms non-trivial values.
        gen = torch.Generator().manual_seed(1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=gen)
                m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=gen)
        model.eval()
    return tsn, tsm


def test_tsm_without_shifted_channels_equals_tsn_bit_for_bit():
    tsn, tsm = _build_pair(fold_div=1024)  # more than any stage's channels: fold = 0 everywhere
    assert _count_shifts(tsm) == 8
    clips = torch.randn(2, T, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(tsn(clips), tsm(clips))


def test_tsm_sees_frame_order_and_tsn_does_not():
    tsn, tsm = _build_pair()
    clips = torch.randn(2, T, 3, 32, 32)
    reversed_clips = clips.flip(1)
    with torch.no_grad():
        # TSN: per-frame features and a mean over frames, so order cannot matter (up to float
        # summation order).
        torch.testing.assert_close(tsn(clips), tsn(reversed_clips), rtol=0, atol=1e-5)
        # TSM with the default shift on the same weights: reversal changes the logits.
        assert (tsm(clips) - tsm(reversed_clips)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["tsn", "tsm"])
def test_temporal_pool_halves_frames_after_layer1(name):
    model = get_workload(name).build({"backbone": "resnet18", "temporal_pool": True}, num_classes=5, num_frames=T)
    pools = [m for m in model.modules() if isinstance(m, TemporalMaxPool)]
    assert len(pools) == 1 and model.backbone.layer1[-1] is pools[0]
    if name == "tsm":
        assert model.backbone.layer1[0].conv1.num_frames == T
        assert model.backbone.layer2[0].conv1.num_frames == T // 2
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, T, 3, 32, 32)).shape == (2, 5)


def test_clip_length_mismatch_names_the_expected_frames():
    model = get_workload("tsm").build({"backbone": "resnet18"}, num_classes=5, num_frames=T)
    with pytest.raises(ValueError, match="4 frames"):
        model(torch.randn(2, 8, 3, 32, 32))


def test_tsm_rejects_bad_shift_place():
    with pytest.raises(ValueError, match="shift_place"):
        get_workload("tsm").build({"backbone": "resnet18", "shift_place": "res"}, num_classes=5, num_frames=T)
