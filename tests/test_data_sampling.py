"""Frame sampling: properties over many video lengths, clip lengths and test views."""

import numpy as np
import pytest

from actionlab.data.sampling import dense_indices, segment_indices

LENGTHS = [1, 2, 3, 7, 8, 9, 16, 31, 100, 301]
CLIP_LENS = [1, 3, 8, 16]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("clip_len", CLIP_LENS)
def test_segment_train_in_range_sorted_one_per_segment(length, clip_len):
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = segment_indices(length, clip_len, train=True, rng=rng)
        assert idx.shape == (clip_len,) and idx.dtype == np.int64
        assert idx.min() >= 0 and idx.max() < length
        assert np.all(np.diff(idx) >= 0)
        seg = length / clip_len
        for i, frame in enumerate(idx):
            # frame lies in the (possibly fractional) segment i
            assert np.floor(i * seg) <= frame <= max(np.floor(i * seg), np.floor((i + 1) * seg) - 1)
        if length >= clip_len:
            assert len(np.unique(idx)) == clip_len


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("clip_len", CLIP_LENS)
@pytest.mark.parametrize("num_clips", [1, 2, 3, 10])
def test_segment_test_deterministic_in_range(length, clip_len, num_clips):
    views = [segment_indices(length, clip_len, train=False, clip_index=k, num_clips=num_clips) for k in range(num_clips)]
    again = [segment_indices(length, clip_len, train=False, clip_index=k, num_clips=num_clips) for k in range(num_clips)]
    for a, b in zip(views, again):
        np.testing.assert_array_equal(a, b)
        assert a.min() >= 0 and a.max() < length and np.all(np.diff(a) >= 0)


def test_segment_test_centres_and_ibm_shifts():
    np.testing.assert_array_equal(segment_indices(80, 8, train=False), np.arange(8) * 10 + 5)
    # IBM multi-clip: shifts range(-n//2+1, n//2+1): n=3 -> -1, 0, +1 frames
    shifted = [segment_indices(80, 8, train=False, clip_index=k, num_clips=3) for k in range(3)]
    np.testing.assert_array_equal(shifted[0], np.arange(8) * 10 + 4)
    np.testing.assert_array_equal(shifted[1], np.arange(8) * 10 + 5)
    np.testing.assert_array_equal(shifted[2], np.arange(8) * 10 + 6)
    # n=2 -> shifts 0, +1
    np.testing.assert_array_equal(segment_indices(80, 8, train=False, clip_index=1, num_clips=2), np.arange(8) * 10 + 6)


def test_segment_train_seeded_is_reproducible():
    a = segment_indices(100, 8, train=True, rng=np.random.default_rng(3))
    b = segment_indices(100, 8, train=True, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("clip_len,stride", [(1, 1), (4, 2), (8, 1), (8, 8), (16, 4)])
def test_dense_in_range_with_stride(length, clip_len, stride):
    rng = np.random.default_rng(1)
    for train in (True, False):
        for _ in range(10 if train else 1):
            idx = dense_indices(length, clip_len, stride, train=train, rng=rng)
            assert idx.shape == (clip_len,) and idx.min() >= 0 and idx.max() < length
            if length >= clip_len * stride:
                np.testing.assert_array_equal(np.diff(idx), stride)  # no wrap when the video is long enough
                assert idx[0] <= length - clip_len * stride


def test_dense_wraps_short_videos():
    np.testing.assert_array_equal(dense_indices(5, 8, 1, train=False), [0, 1, 2, 3, 4, 0, 1, 2])


def test_dense_test_starts_even_and_deterministic():
    starts = [dense_indices(100, 8, 2, train=False, clip_index=k, num_clips=4)[0] for k in range(4)]
    assert starts == sorted(starts) and starts[0] >= 0 and starts[-1] <= 100 - 16
    assert len(set(np.diff(starts))) <= 2  # evenly spaced up to rounding
    assert dense_indices(100, 8, 2, train=False)[0] == (100 - 16) // 2  # one clip: centred


@pytest.mark.parametrize("bad", [dict(num_frames=0), dict(clip_index=2, num_clips=2), dict(T=0)])
def test_invalid_arguments_raise(bad):
    args = dict(num_frames=10, T=4, clip_index=0, num_clips=1) | bad
    with pytest.raises(ValueError):
        segment_indices(args["num_frames"], args["T"], train=False, clip_index=args["clip_index"], num_clips=args["num_clips"])
