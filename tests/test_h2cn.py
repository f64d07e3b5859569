"""H2CN: compute pinned to the official model, the two hourglass convolutions, weight loading.

The logits were checked equal to the official `ty-97/H2CN` VideoNet (net H2CN, 8 segments, 174
classes, random weights and BN statistics copied through `load_pretrained`) outside the project:
max |diff| 0 at 224 px. The paper's GFLOPs could not be found (the README has none), so the pin is
the official model's count with the same counter (FlopCounterMode): 33.608 GMACs.
"""

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from actionlab.flops import workload_compute
from workloads import get_workload
from workloads.h2cn import ClipHourglass, FrameHourglass

TINY = get_workload("h2cn").tiny


def test_h2cn_r50_8_segments_matches_the_official_count():
    compute = workload_compute("h2cn", num_frames=8, size_px=224, num_classes=174)
    assert compute.gmacs == pytest.approx(33.608, rel=1e-3)  # official VideoNet, same counter
    assert compute.params == 24_074_440 - 9_472  # official minus its unused `conv1_temp`
    # "neglectable computation overhead" over TSM-R50 at 8 frames (32.7 GMACs here)
    assert compute.gmacs / workload_compute("tsm", num_frames=8, size_px=224, num_classes=174).gmacs < 1.05


def test_frame_hourglass_starts_as_a_motion_difference():
    torch.manual_seed(0)
    hgc = FrameHourglass(3, num_frames=5)
    with torch.no_grad():  # aggregation = identity (centre tap of the dilated 3x3)
        hgc.spatial.weight.zero_()
        hgc.spatial.weight[:, :, 1, 1] = 1.0
    frames = torch.randn(2 * 5, 3, 8, 8)  # two snippets of 5 frames
    out = hgc(frames).view(2, 3, 3, 8, 8)  # 5 -> 3 inner frames
    snippets = frames.view(2, 5, 3, 8, 8)
    assert torch.allclose(out, snippets[:, 1:4] - snippets[:, 2:5], atol=1e-6)


def test_frame_hourglass_sees_neighbours_through_a_dilated_window():
    hgc = FrameHourglass(1, num_frames=3, motion_init=False)
    frames = torch.zeros(3, 1, 9, 9, requires_grad=True)
    hgc(frames)[0, 0, 4, 4].backward()
    grad = frames.grad[:, 0]
    assert grad[1].abs().sum() == grad[1, 4, 4].abs()  # centre frame: one tap
    taps = {tuple(yx) for yx in torch.nonzero(grad[0]).tolist()}
    assert taps <= {(y, x) for y in (2, 4, 6) for x in (2, 4, 6)} and len(taps) > 1  # neighbours: dilation 2


def test_clip_hourglass_is_zero_padded_at_the_clip_ends():
    torch.manual_seed(0)
    block = ClipHourglass(16, num_segments=4, reduction=4).eval()
    x = torch.randn(4, 16, 5, 5, requires_grad=True)  # one clip of 4 segments
    block(x)[0].sum().backward()  # segment 0 sees segments 0 and 1 only
    assert x.grad[2:].abs().sum() == 0 and x.grad[1].abs().sum() > 0


def test_imagenet_trunk_loads_and_seeds_the_motion_stem(tmp_path):
    torch.manual_seed(0)
    model = get_workload("h2cn").build(TINY, num_classes=5, num_frames=2)
    trunk = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()
             if re.match(r"^(conv1|bn1|layer\d)\.", k) and ".chgc." not in k and k != "conv1.bias"
             and not k.endswith("downsample.0.bias")}
    trunk["fc.weight"] = torch.zeros(1000, 128)  # the ImageNet classifier is skipped
    path = tmp_path / "resnet50-19c8e357.pth"
    torch.save(trunk, path)
    loaded = get_workload("h2cn").build({**TINY, "pretrained": str(path)}, num_classes=5, num_frames=2)
    assert torch.equal(loaded.layer2[0].conv2.weight, trunk["layer2.0.conv2.weight"])
    assert torch.allclose(loaded.conv_fhgc[0].weight, trunk["conv1.weight"].mean(1, keepdim=True).expand(-1, 9, -1, -1))
    del trunk["layer1.0.bn2.weight"]
    torch.save(trunk, path)
    with pytest.raises(ValueError, match=r"missing \['layer1.0.bn2.weight'\]"):
        get_workload("h2cn").build({**TINY, "pretrained": str(path)}, num_classes=5, num_frames=2)


def test_official_checkpoint_names_convert(tmp_path):
    torch.manual_seed(0)
    source = get_workload("h2cn").build(TINY, num_classes=5, num_frames=2).eval()
    official = {}
    for key, value in source.state_dict().items():  # our names -> the official VideoNet's
        key = re.sub(r"^layer(\d)\.", r"layer\1_bak.", key).replace(".chgc.", ".mtdin.")
        key = re.sub(r"^(fhgc\d\.0)\.spatial\.", r"\1.spaAgg.", key)
        key = re.sub(r"^(fhgc\d\.0)\.temporal\.", r"\1.convt.", key)
        key = "new_fc." + key[3:] if key.startswith("fc.") else "base_model." + key
        official["module." + key] = value
    official["module.base_model.conv1_temp.weight"] = torch.zeros(16, 3, 7, 7)
    path = tmp_path / "h2cn_something_8f.pth.tar"
    torch.save({"state_dict": official, "epoch": 60}, path)
    loaded = get_workload("h2cn").build({**TINY, "pretrained": str(path)}, num_classes=5, num_frames=2).eval()
    clips = torch.randn(1, 10, 3, 32, 32)
    assert torch.equal(source(clips), loaded(clips))


def test_num_frames_counts_segments_of_five_frame_snippets():
    spec = get_workload("h2cn")
    fmt = spec.input_for(TINY, num_frames=8)
    assert (fmt.sampling, fmt.snippet_frames, fmt.clip_frames) == ("snippets", 5, 40)
    model = spec.build(TINY, num_classes=5, num_frames=2)
    assert model.num_segments == 2
    with pytest.raises(ValueError, match="2 segments x 5 frames = 10 frames"):
        model(torch.randn(1, 2, 3, 32, 32))


def test_h2cn_trains_and_tests_on_generated_clips_through_the_dataset(synth_dataset):
    from actionlab.data import manifest
    from actionlab.data.dataset import VideoClipDataset
    from actionlab.data.loader import make_loader
    from actionlab.train.evaluate import normalise, stats_tensors

    spec = get_workload("h2cn")
    fmt = spec.input_for(TINY, num_frames=2, size_px=32, resize_px=32)
    df = manifest.read_manifest(synth_dataset)  # 8-frame videos: 4 run starts, 2 per segment
    common = dict(df=df, fmt=fmt, root=synth_dataset.parent, num_classes=4)
    mean, std = stats_tensors(fmt.mean, fmt.std, "cpu")
    torch.manual_seed(0)
    model = spec.build(TINY, num_classes=4, num_frames=2)
    batch = next(iter(make_loader(VideoClipDataset(train=True, **common), batch_size=4, shuffle=False,
                                  num_workers=0, timeout_s=60, drop_last=False)))
    assert batch["clip"].shape == (4, 10, 3, 32, 32) and not batch["bad"]  # (B, S*5, C, H, W)
    logits = model(normalise(batch["clip"], mean, std))
    assert logits.shape == (4, 4)
    torch.nn.functional.cross_entropy(logits, batch["label"]).backward()
    assert model.conv_fhgc[0].weight.grad.abs().sum() > 0  # the motion stem sees the snippets

    item = VideoClipDataset(train=False, num_clips=2, **common)[0]
    assert item["clip"].shape == (2, 10, 3, 32, 32)  # (views, S*5, C, H, W)
    with torch.no_grad():
        assert model.eval()(normalise(item["clip"], mean, std)).shape == (2, 4)
