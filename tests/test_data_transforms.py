"""Clip transforms: shapes, one crop for all frames, flips and label swaps."""

import numpy as np
import pytest
import torch

from actionlab.data import transforms
from actionlab.data.synthetic import CLASS_NAMES


def _ramp_clip(num_frames=4, height=48, width=64):
    """Frame t = a horizontal ramp + 10 t: any crop shows the same ramp offset in every frame."""
    ramp = np.linspace(0, 150, width)[None, :, None]
    frames = [np.broadcast_to(ramp + 10 * t, (height, width, 3)) for t in range(num_frames)]
    return np.stack(frames).astype(np.uint8)  # (T, H, W, 3)


def test_flip_pairs_from_names():
    pairs = transforms.flip_pairs_from_names(list(CLASS_NAMES))
    names = {CLASS_NAMES[a]: CLASS_NAMES[b] for a, b in pairs.items()}
    assert names == {"move_left": "move_right", "move_right": "move_left", "rotate_cw": "rotate_ccw", "rotate_ccw": "rotate_cw"}
    ssv2 = ["Pushing something from left to right", "Pushing something from right to left", "Turning clockwise", "Turning anticlockwise", "Waving"]
    assert transforms.flip_pairs_from_names(ssv2) == {0: 1, 1: 0, 3: 2, 2: 3}


def test_train_shape_dtype_and_same_crop_for_all_frames():
    clip = _ramp_clip()
    for seed in range(10):
        out, label = transforms.train_transform(
            clip, 3, size_px=32, resize_px=40, scales=(1.0, 0.875, 0.75, 0.66), flip="off", flip_pairs=None,
            rng=np.random.default_rng(seed),
        )
        assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8 and label == 3
        diffs = out.int() - out[:1].int()  # (T, C, H, W): frame t differs from frame 0 by exactly 10 t
        for t in range(4):
            assert diffs[t].min() >= 10 * t - 1 and diffs[t].max() <= 10 * t + 1


def test_train_accepts_torch_input_and_portrait_frames():
    clip = torch.from_numpy(_ramp_clip(height=70, width=30))
    out, _ = transforms.train_transform(
        clip, 0, size_px=24, resize_px=28, scales=(1.0, 0.75), flip="on", flip_pairs=None, rng=np.random.default_rng(0)
    )
    assert out.shape == (4, 3, 24, 24)


def test_flip_policies():
    clip = _ramp_clip()
    pairs = {0: 1, 1: 0}
    seen = {"off": set(), "on": set(), "swap_pairs": set()}
    for policy in seen:
        for seed in range(16):
            out, label = transforms.train_transform(
                clip, 0, size_px=32, resize_px=48, scales=(1.0,), flip=policy, flip_pairs=pairs, rng=np.random.default_rng(seed)
            )
            flipped = bool(out[0, 0, 0, 0] > out[0, 0, 0, -1])  # the ramp rises left to right unless flipped
            seen[policy].add((flipped, label))
    assert seen["off"] == {(False, 0)}
    assert seen["on"] == {(False, 0), (True, 0)}
    assert seen["swap_pairs"] == {(False, 0), (True, 1)}


def test_test_transform_centre_and_three_crops():
    clip = _ramp_clip(height=40, width=80)
    one = transforms.test_transform(clip, size_px=32, resize_px=32, num_crops=1)
    three = transforms.test_transform(clip, size_px=32, resize_px=32, num_crops=3)
    assert one.shape == (1, 4, 3, 32, 32) and three.shape == (3, 4, 3, 32, 32)
    left, centre, right = (three[i, 0, 0].float().mean().item() for i in range(3))
    assert left < centre < right  # along the long side
    torch.testing.assert_close(one[0], three[1])
    portrait = transforms.test_transform(_ramp_clip(height=80, width=40), size_px=32, resize_px=32, num_crops=3)
    assert portrait.shape == (3, 4, 3, 32, 32)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="flip='sometimes'"):
        transforms.train_transform(_ramp_clip(), 0, size_px=8, resize_px=8, scales=(1.0,), flip="sometimes", flip_pairs=None, rng=np.random.default_rng())
    with pytest.raises(ValueError, match="num_crops=5"):
        transforms.test_transform(_ramp_clip(), size_px=8, resize_px=8, num_crops=5)
    with pytest.raises(ValueError, match="uint8 clip"):
        transforms.to_tchw(np.zeros((4, 8, 8), np.uint8))
