"""MACs/params measured on the real modules, against the IBM tables (methods_backbones.md 3.9)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn

from actionlab.flops import Compute, measure, workload_compute
from workloads import get_workload

# TSN/TSM ResNet-50, 224 px, 400 classes: GMACs by frames, and params (24,327,632 exactly).
IBM_R50_GMACS = {8: 32.7, 16: 65.4, 32: 130.8}
IBM_R50_PARAMS = 24.33e6


@pytest.mark.parametrize("name", ["tsn", "tsm"])
@pytest.mark.parametrize("num_frames", [8, 16])
def test_r50_matches_the_ibm_table(name, num_frames):
    compute = workload_compute(name, num_frames=num_frames, size_px=224, num_classes=400)
    assert compute.gmacs == pytest.approx(IBM_R50_GMACS[num_frames], rel=0.02)
    assert compute.params == pytest.approx(IBM_R50_PARAMS, rel=0.005)
    # Conv-only (the table's convention): 4,087,136,256 MACs per frame.
    assert compute.conv_gmacs == pytest.approx(num_frames * 4.087136256, rel=1e-6)


def test_macs_scale_linearly_with_frames_and_tsm_costs_what_tsn_costs():
    by_frames = {t: workload_compute("tsm", num_frames=t, size_px=224, num_classes=400) for t in (8, 16, 32)}
    assert by_frames[16].gmacs == pytest.approx(2 * by_frames[8].gmacs, rel=1e-9)
    assert by_frames[32].gmacs == pytest.approx(4 * by_frames[8].gmacs, rel=1e-9)
    assert by_frames[32].gmacs == pytest.approx(IBM_R50_GMACS[32], rel=0.02)
    assert workload_compute("tsn", num_frames=8, size_px=224, num_classes=400) == by_frames[8]


def test_weight_sources_are_ignored_when_counting(tmp_path):
    # No download, no file read: weights do not change MACs.
    compute = workload_compute(
        "tsn", num_frames=8, size_px=224, num_classes=400, params={"pretrained": str(tmp_path / "absent.pth")}
    )
    assert compute.gmacs == pytest.approx(32.7, rel=0.02)
    from_timm = {"backbone": "resnet50.tv_in1k", "pretrained": "timm"}  # offline in tests: a download would fail
    assert workload_compute("tsn", num_frames=8, size_px=224, num_classes=400, params=from_timm) == compute
    wrapped = {"backbone_workload": "tsn", "backbone_params": {"pretrained": str(tmp_path / "absent.pth")},
               "method": "mixup"}
    assert workload_compute("svmix", num_frames=8, size_px=224, num_classes=400, params=wrapped).gmacs > 0


def test_measure_leaves_a_real_model_untouched():
    model = get_workload("tsm").build({"backbone": "resnet18"}, num_classes=5, num_frames=4)
    model.train()
    model.backbone.layer1.eval()  # a partly frozen model keeps its per-module modes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compute = measure(model, (1, 4, 3, 32, 32))
    assert compute.gmacs > 0 and compute.params == sum(p.numel() for p in model.parameters())
    assert model.training and not model.backbone.layer1.training
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _DataDependent(nn.Module):
    """Runs a conv only for clips whose mean is positive: cannot run on the meta device."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, clips):
        frames = clips.flatten(0, 1)  # (B*T, C, H, W)
        feats = self.conv(frames) if frames.mean().item() > -10 else frames.new_zeros(frames.shape[0], 4, 8, 8)
        return self.fc(feats.mean((2, 3))).view(clips.shape[0], -1, 2).mean(1)  # (B, 2)


def test_measure_falls_back_to_a_real_forward_for_data_dependent_modules():
    model = _DataDependent()
    compute = measure(model, (1, 2, 3, 8, 8))
    conv_macs = 2 * (4 * 8 * 8) * (3 * 3 * 3)  # frames x output elements x kernel volume
    assert compute.conv_gmacs == pytest.approx(conv_macs / 1e9)
    assert compute.gmacs == pytest.approx((conv_macs + 2 * 4 * 2) / 1e9)  # + the FC per frame
    assert compute.params == sum(p.numel() for p in model.parameters())


def test_compute_metrics_use_model_keys():
    metrics = Compute(gmacs=32.7, params=24_327_632, conv_gmacs=32.69).as_metrics()
    assert metrics == {"model/gmacs": 32.7, "model/params": 24_327_632.0, "model/conv_gmacs": 32.69}


def test_tsn_with_ibm_temporal_stride_matches_ibm_resnet50_tp_f8():
    # IBM benchmark_mini.md "resnet-50-tp-f8": 14,135,984,128 conv MACs (time max-pooled after layer1-3).
    compute = workload_compute("tsn", num_frames=8, size_px=224, num_classes=400, params={"without_t_stride": False})
    assert compute.conv_gmacs == pytest.approx(14.135984128, rel=1e-9)
    assert compute.params == 24_327_632  # pooling adds no parameters: IBM checkpoints load either way
    with pytest.raises(ValueError, match="two pooling schemes"):
        get_workload("tsn").build({"backbone": "resnet18", "temporal_pool": True, "without_t_stride": False},
                                  num_classes=5, num_frames=8)
