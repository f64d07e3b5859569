"""The IBM study's model family (TAM, I3D, ResNet3D, S3D, R(2+1)D): inflation maths, temporal strides,
depths, weight loading, and compute against the figures of Chen, Panda et al., CVPR 2021.

Reference figures are IBM action-recognition-pytorch's (benchmark_mini.md, and the 400-class table
in reference/methods_backbones.md section 3.9). Full-size models are counted on the meta device.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch
from torch import nn

from actionlab.flops import workload_compute
from workloads import get_workload
from workloads.layers.head3d import build_video_net3d
from workloads.layers.inception3d import InceptionV1_3d
from workloads.layers.inflate import inflate_into
from workloads.layers.resnet3d import ResNet3d, tran_mid_channels
from workloads.layers.tam import TemporalAggregation

NO_TS = {"without_t_stride": True}

# (workload, params, frames, reference GMACs, reference params in M), 224 px, 400 classes.
# Rows named "ts" are IBM's defaults (temporal stride / pooling on); the others use without_t_stride.
R50_TABLE = [
    *[("tsn", {}, t, g, 24.33) for t, g in ((8, 32.7), (16, 65.4), (32, 130.8))],
    *[("tsm", {}, t, g, 24.33) for t, g in ((8, 32.7), (16, 65.4), (32, 130.8))],
    *[("tam", NO_TS, t, g, 24.37) for t, g in ((8, 32.8), (16, 65.7), (32, 131.3))],
    *[("tam", {}, t, g, 24.37) for t, g in ((8, 14.2), (16, 28.4), (32, 56.9))],
    *[("i3d", NO_TS, t, g, 46.98) for t, g in ((8, 64.2), (16, 128.4), (32, 256.7))],
    *[("r3d", NO_TS, t, g, 46.98) for t, g in ((8, 64.2), (16, 128.4), (32, 256.7))],
    *[("r3d", {}, t, g, 46.98) for t, g in ((8, 29.5), (16, 58.9), (32, 117.8))],
    *[("r2plus1d", NO_TS, t, g, 28.13) for t, g in ((8, 39.5), (16, 79.0), (32, 158.1))],
    *[("s3d", {"backbone": "resnet", **NO_TS}, t, g, 28.13) for t, g in ((8, 39.5), (16, 79.0), (32, 158.1))],
    *[("r2plus1d", {}, t, g, 28.13) for t, g in ((8, 19.7), (16, 39.3), (32, 78.7))],
]
OTHER_TABLE = [
    ("r3d", NO_TS, 32, 335.3, 46.98, 256),  # the K400 test crop
    ("tam", {"depth": 101, **NO_TS}, 8, 62.6, 43.41, 224),
    ("r3d", {"depth": 101, **NO_TS}, 8, 125.3, 86.03, 224),
    ("r2plus1d", {"depth": 101, **NO_TS}, 8, 74.5, 50.47, 224),
    ("i3d", {"backbone": "inception_v1", **NO_TS}, 32, 135.23, 12.70, 224),  # benchmark_mini (mini-K)
    ("i3d", {"backbone": "inception_v1"}, 8, 21.41, 12.70, 224),
    ("s3d", NO_TS, 8, 19.78, 8.31, 224),
    ("s3d", {}, 8, 12.26, 8.31, 224),
]


def _check(name, params, frames, ref_gmacs, ref_mparams, size_px=224):
    c = workload_compute(name, num_frames=frames, size_px=size_px, num_classes=400, params=params)
    assert c.gmacs == pytest.approx(ref_gmacs, rel=0.02), (name, params, frames, c)
    assert c.params / 1e6 == pytest.approx(ref_mparams, rel=0.02), (name, params, frames, c)


@pytest.mark.parametrize("name,params,frames,gmacs,mparams", R50_TABLE)
def test_r50_compute_matches_ibm(name, params, frames, gmacs, mparams):
    _check(name, params, frames, gmacs, mparams)


@pytest.mark.parametrize("name,params,frames,gmacs,mparams,size_px", OTHER_TABLE)
def test_other_rows_match_ibm(name, params, frames, gmacs, mparams, size_px):
    _check(name, params, frames, gmacs, mparams, size_px)


@pytest.mark.parametrize(
    "name,params,exact_conv_macs,exact_params_200",
    [
        # benchmark_mini.md (mini-Kinetics, 200 classes), ResNet-18, 8 frames, exact numbers.
        ("r3d", {"depth": 18, **NO_TS}, 43_217_190_912, 33_268_872),
        ("r2plus1d", {"depth": 18, **NO_TS}, 21_329_215_488, 15_483_528),
        ("tam", {"depth": 18, **NO_TS}, 14_530_768_896, 11_283_528),
        ("r3d", {}, 29_460_135_936, 46_571_144),
        ("r2plus1d", {}, 19_672_203_264, 27_716_616),
        ("tam", NO_TS, 32_831_963_136, 23_957_192),
    ],
)
def test_exact_conv_macs_and_params(name, params, exact_conv_macs, exact_params_200):
    c = workload_compute(name, num_frames=8, size_px=224, num_classes=200, params=params)
    assert round(c.conv_gmacs * 1e9) == exact_conv_macs
    assert c.params == exact_params_200


@pytest.mark.parametrize("name", ["tam", "r3d", "r2plus1d"])
@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_depths_build(name, depth):
    with torch.device("meta"):
        model = get_workload(name).build({"depth": depth}, num_classes=10, num_frames=8)
    assert sum(p.numel() for p in model.parameters()) > 0


# Temporal strides: x2 three times when without_t_stride is False (IBM's default).
@pytest.mark.parametrize(
    "name,params,frames,t_out",
    [
        ("r3d", {}, 8, 1),
        ("r3d", {}, 16, 2),
        ("r3d", NO_TS, 8, 8),
        ("r2plus1d", {}, 16, 2),
        ("r2plus1d", NO_TS, 8, 8),
        ("i3d", {"backbone": "inception_v1"}, 16, 2),
        ("i3d", {"backbone": "inception_v1", **NO_TS}, 8, 8),
        ("s3d", {}, 16, 2),
        ("s3d", NO_TS, 8, 7),  # IBM's S3D: last pool has temporal kernel 2 and no padding
        ("r3d", {}, 4, 1),  # tiny clips: T' bottoms out at 1
        ("s3d", {}, 4, 1),
    ],
)
def test_temporal_strides_3d(name, params, frames, t_out):
    spec = get_workload(name)
    model = spec.build({**spec.tiny, **params}, num_classes=3, num_frames=frames).eval()
    with torch.no_grad():  # 16 px keeps CPU Conv3d cheap; the trunks handle 1x1 maps
        feats = model.forward_features(torch.randn(1, frames, 3, 16, 16))
        assert feats.shape[2] == t_out
        assert model.head(feats).shape == (1, 3)


@pytest.mark.parametrize("params,frames,t_out", [({}, 8, 1), ({}, 16, 2), (NO_TS, 8, 8), ({}, 4, 1)])
def test_temporal_pools_tam(params, frames, t_out):
    model = get_workload("tam").build({"depth": 18, **params}, num_classes=3, num_frames=frames).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(2 * frames, 3, 16, 16))  # (B*T', D)
    assert feats.shape[0] == 2 * t_out


# Inflation.


WIDTH = 16  # quarter-width stages (timm keeps the 64-wide stem) keep CPU Conv3d cheap; same maths


def _random_resnet18_2d(num_classes=7):
    """A quarter-width timm ResNet-18 with random weights and non-trivial BN statistics."""
    torch.manual_seed(0)
    channels = tuple(WIDTH * 2**i for i in range(4))
    model = timm.create_model("resnet18", num_classes=num_classes, channels=channels, stem_width=WIDTH)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_static_clip_through_mean_inflated_i3d_gives_2d_logits():
    model_2d = _random_resnet18_2d()
    trunk = ResNet3d(depth=18, base_width=WIDTH, stem_width=64, t_strides=False)
    model = build_video_net3d(trunk, num_classes=7, dropout=0.5).eval()
    report = model.backbone.load_2d(model_2d.state_dict(), scale="mean")
    assert not report.new and report.skipped == ["fc.weight", "fc.bias"]
    model.head.fc.load_state_dict(model_2d.fc.state_dict())
    # 17 temporal 3-taps (stem + 16 convs) each reach one frame further into the zero padding, so
    # with T = 35 the middle step sees only real frames: there the maths says 3D == 2D exactly.
    frames, mid = 35, 17
    image = torch.randn(1, 3, 32, 32)
    clip = image.unsqueeze(1).expand(1, frames, 3, 32, 32)  # (B, T, C, H, W), a static clip
    with torch.no_grad():
        logits_2d = model_2d(image)
        feats = model.forward_features(clip)  # (1, 8 * WIDTH, T, 1, 1)
        logits_mid = model.head.fc(feats[:, :, mid].mean(dim=(2, 3)))
        logits_end = model.head.fc(feats[:, :, 0].mean(dim=(2, 3)))
    torch.testing.assert_close(logits_mid, logits_2d, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits_end, logits_2d, atol=1e-3)  # the clip ends do see the padding


def test_repeat_inflation_is_kt_times_mean():
    state_2d = _random_resnet18_2d().state_dict()
    mean, repeat = (ResNet3d(depth=18, base_width=WIDTH, stem_width=64) for _ in range(2))
    mean.load_2d(state_2d, scale="mean")
    report = repeat.load_2d(state_2d, scale="repeat")
    assert "conv1.weight" in report.inflated and "layer1.0.conv2.weight" in report.inflated
    for key in report.inflated:
        k_t = repeat.state_dict()[key].shape[2]
        torch.testing.assert_close(repeat.state_dict()[key], mean.state_dict()[key] * k_t)
    # A static clip through the IBM-inflated stem conv: kT (= 3) times the 2D response away from the ends.
    image = torch.randn(1, 3, 16, 16)
    clip = image.unsqueeze(2).expand(1, 3, 5, 16, 16)  # (B, C, T, H, W)
    with torch.no_grad():
        out_2d = nn.functional.conv2d(image, state_2d["conv1.weight"], stride=2, padding=3)
        out_3d = repeat.conv1(clip)
    torch.testing.assert_close(out_3d[:, :, 2], 3 * out_2d, rtol=1e-4, atol=1e-4)


def test_r2plus1d_takes_2d_weights_in_its_spatial_convs(tmp_path):
    state_2d = timm.create_model("resnet18").state_dict()  # full width: the builder's path, no forward
    # Like torchvision's original ImageNet files: no BN step counters.
    state_2d = {k: v for k, v in state_2d.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": state_2d}, path)
    params = {"depth": 18, "pretrained": str(path)}
    model = get_workload("r2plus1d").build(params, num_classes=3, num_frames=8)
    own = model.backbone.state_dict()
    assert torch.equal(own["layer1.0.conv1.weight"][:, :, 0], state_2d["layer1.0.conv1.weight"])
    assert torch.equal(own["layer2.0.bn2.running_var"], state_2d["layer2.0.bn2.running_var"])
    report = model.pretrained_report
    assert report.new and all("_t." in k or "num_batches" in k for k in report.new)  # temporal convs are new
    with pytest.raises(ValueError, match="IBM width"):
        get_workload("r2plus1d").build(
            {**params, "mid_width": "tran"}, num_classes=3, num_frames=8
        )


def test_mismatched_2d_weights_are_listed_not_skipped():
    state_2d = {f"module.{k}": v for k, v in _random_resnet18_2d().state_dict().items()}
    with pytest.raises(ValueError, match=r"missing \['conv1.weight'.*unexpected \['module.conv1.weight'"):
        ResNet3d(depth=18, base_width=WIDTH, stem_width=64).load_2d(state_2d)
    with pytest.raises(ValueError, match="shape mismatches"):
        ResNet3d(depth=18).load_2d(_random_resnet18_2d().state_dict())  # full width vs quarter width


@pytest.mark.parametrize("kind", ["i3d", "s3d"])
def test_googlenet_inflates_by_name(kind):
    import torchvision

    torch.manual_seed(0)
    state_2d = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).state_dict()
    trunk = InceptionV1_3d(kind=kind)
    report = trunk.load_2d(state_2d, scale="mean")
    assert {k.split(".")[0] for k in report.skipped} == {"fc", "aux1", "aux2"}
    if kind == "i3d":
        assert not report.new
        torch.testing.assert_close(trunk.conv1.conv.weight.sum(2), state_2d["conv1.conv.weight"])
    else:
        assert report.new and all("_t." in k for k in report.new)
        w = trunk.inception4a.branch2[1].conv.weight  # the 1x3x3 half of a separable unit
        torch.testing.assert_close(w[:, :, 0], state_2d["inception4a.branch2.1.conv.weight"])


def test_unknown_inflate_scale_is_an_error():
    with pytest.raises(ValueError, match="inflate_scale"):
        get_workload("r3d").build({"inflate_scale": "avg"}, num_classes=3, num_frames=8)
    with pytest.raises(ValueError, match="inflate_scale"):
        inflate_into(nn.Conv3d(1, 1, 1), {}, scale="avg")


def test_tran_width_matches_the_full_3d_conv():
    for c_in, c_out in ((64, 64), (64, 128), (512, 512)):
        m = tran_mid_channels(c_in, c_out)
        full, pair = 27 * c_in * c_out, 9 * c_in * m + 3 * m * c_out
        assert pair <= full < pair + 9 * c_in + 3 * c_out  # floor: within one mid channel
    assert tran_mid_channels(64, 64) == 144  # Tran et al.: 2.25 x planes for square convs
    tran = workload_compute("r2plus1d", num_frames=8, size_px=224, num_classes=400, params={"mid_width": "tran"})
    full = workload_compute("r3d", num_frames=8, size_px=224, num_classes=400)
    assert tran.params == pytest.approx(full.params, rel=1e-3)  # R50: 47.00 M vs 46.98 M


# TAM.


def test_tam_matches_hand_computed_values():
    tam = TemporalAggregation(2, num_frames=3)
    with torch.no_grad():
        # Channel c, offsets (prev, current, next): output channel c*3 + j.
        tam.conv.weight.copy_(torch.tensor([1.0, 10.0, 100.0, -1.0, 0.0, 0.0]).view(6, 1, 1, 1))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]).view(3, 2, 1, 1)  # (T, C), B = 1
    out = tam(x).view(3, 2)
    # Channel 0: x[t-1] + 10 x[t] + 100 x[t+1] (zeros past the ends); channel 1: relu(-x[t-1]).
    expected = torch.tensor([[0 + 10 + 300, 0.0], [1 + 30 + 500, 0.0], [3 + 50 + 0, 0.0]])
    torch.testing.assert_close(out, expected)


def test_tam_params_and_identity_init():
    with torch.device("meta"):
        tam_model = get_workload("tam").build({"depth": 50, **NO_TS}, num_classes=400, num_frames=8)
        tsn_model = get_workload("tsn").build({"backbone": "resnet50"}, num_classes=400, num_frames=8)
    extra = sum(p.numel() for p in tam_model.parameters()) - sum(p.numel() for p in tsn_model.parameters())
    assert extra == 39_360  # 3 x the input channels of the 16 blocks

    tiny = {"depth": 18, **NO_TS, "tam_init": "identity"}
    model = get_workload("tam").build(tiny, num_classes=3, num_frames=4).eval()
    clips = torch.rand(2, 4, 3, 32, 32)
    # Block inputs are ReLU outputs, so an identity TAM (current frame 1, then ReLU) changes nothing.
    with torch.no_grad():
        reversed_out = model(clips.flip(1))
        out = model(clips)
    torch.testing.assert_close(out, reversed_out)  # identity TAM = TSN: order-invariant
    model = get_workload("tam").build({"depth": 18, **NO_TS}, num_classes=3, num_frames=4).eval()
    with torch.no_grad():  # IBM init: order matters (compared on features; the fresh FC is ~0)
        feats = model.backbone(clips.flatten(0, 1)).view(2, 4, -1).mean(1)
        feats_reversed = model.backbone(clips.flip(1).flatten(0, 1)).view(2, 4, -1).mean(1)
    assert not torch.allclose(feats, feats_reversed, rtol=1e-3)
