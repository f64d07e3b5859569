"""The synthetic motion dataset: layout, determinism, reversed pairs, real decodable H.264."""

import numpy as np
import pandas as pd
import pytest

from actionlab.data import decode, manifest, synthetic
from actionlab.data.synthetic import CLASS_NAMES, render_clip


def test_layout_and_stratified_split(synth_dataset):
    df = manifest.read_manifest(synth_dataset)
    assert list(df.columns) == ["video", "label", "split", "num_frames"]
    assert manifest.read_classes(manifest.default_classes(synth_dataset)) == list(CLASS_NAMES[:4])
    counts = df.groupby(["label", "split"]).size().unstack()
    assert (counts["train"] == counts["train"].iloc[0]).all() and (counts["val"] == counts["val"].iloc[0]).all()
    assert counts["val"].iloc[0] >= 1 and len(df) == 24
    for video in df["video"]:
        assert video.startswith("videos/") and (synth_dataset.parent / video).stat().st_size > 0


def test_videos_are_real_h264_with_the_rendered_frames(synth_dataset):
    df = manifest.read_manifest(synth_dataset)
    row = df.iloc[7]
    path = synth_dataset.parent / row["video"]
    assert decode.count_frames(path) == row["num_frames"] == 8
    frames = decode.read_frames(path, np.arange(8))
    assert frames.shape == (8, 32, 32, 3)
    name = CLASS_NAMES[row["label"]]
    index = int(row["video"].rsplit("_", 1)[1].split(".")[0])
    rendered = render_clip(name, seed=(0, int(row["label"]), index), num_frames=8, size_px=32)
    # yuv420p halves chroma resolution: edges of coloured shapes differ, the bulk stays close
    assert np.abs(frames.astype(int) - rendered.astype(int)).mean() < 8


def test_same_seed_same_frames_and_labels(tmp_path):
    a = synthetic.synthesize(tmp_path / "a", num_classes=2, videos_per_class=3, num_frames=4, size_px=16, seed=5, num_procs=2)
    b = synthetic.synthesize(tmp_path / "b", num_classes=2, videos_per_class=3, num_frames=4, size_px=16, seed=5, num_procs=1)
    pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    for video in pd.read_parquet(a)["video"]:
        fa = decode.read_frames(a.parent / video, range(4))
        fb = decode.read_frames(b.parent / video, range(4))
        np.testing.assert_array_equal(fa, fb)


def test_render_is_deterministic_and_seed_dependent():
    a = render_clip("approach", seed=3, num_frames=6, size_px=32)
    np.testing.assert_array_equal(a, render_clip("approach", seed=3, num_frames=6, size_px=32))
    assert not np.array_equal(a, render_clip("approach", seed=4, num_frames=6, size_px=32))
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8


@pytest.mark.parametrize("pair", range(4))
def test_reversed_class_is_the_same_process_reversed(pair):
    first, second = CLASS_NAMES[2 * pair], CLASS_NAMES[2 * pair + 1]
    for seed in range(3):
        forward = render_clip(first, seed=seed, num_frames=8, size_px=32)
        backward = render_clip(second, seed=seed, num_frames=8, size_px=32)
        np.testing.assert_array_equal(backward, forward[::-1])
        assert not np.array_equal(forward[0], forward[-1])  # there is motion


def _object_centre(frame: np.ndarray) -> np.ndarray:
    background = np.median(frame.reshape(-1, 3), axis=0)
    mask = np.abs(frame.astype(int) - background).sum(-1) > 60
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean(), mask.sum()])


def test_motion_goes_the_named_way():
    for seed in range(3):
        left = render_clip("move_left", seed=seed, num_frames=8, size_px=64)
        up = render_clip("move_up", seed=seed, num_frames=8, size_px=64)
        near = render_clip("approach", seed=seed, num_frames=8, size_px=64)
        assert _object_centre(left[-1])[0] < _object_centre(left[0])[0] - 20  # travels across the frame
        assert _object_centre(up[-1])[1] < _object_centre(up[0])[1] - 20
        assert _object_centre(near[-1])[2] > 4 * _object_centre(near[0])[2]


@pytest.mark.parametrize("kwargs", [dict(num_classes=1), dict(num_classes=9), dict(size_px=33), dict(num_frames=1)])
def test_invalid_arguments_name_the_fix(tmp_path, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        synthetic.synthesize(tmp_path, **kwargs)
