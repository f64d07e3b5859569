"""Frame sampling: properties over many video lengths, clip lengths and test views."""

import numpy as np
import pytest

from actionlab.data.sampling import dense_indices, segment_indices, snippet_indices

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


# -- snippets (TDN / H2CN `TSNDataSet`, new_length = 5): rule worked by hand from its formulas ---------


def _starts(indices: np.ndarray, snippet_frames: int = 5) -> np.ndarray:
    return indices.reshape(-1, snippet_frames)[:, 0]


@pytest.mark.parametrize("length", [1, 3, 5, 8, 9, 12, 13, 40, 301])
@pytest.mark.parametrize("segments", [1, 2, 8, 16])
def test_snippets_are_runs_of_consecutive_frames_segment_major(length, segments):
    rng = np.random.default_rng(0)
    for train in (True, False):
        idx = snippet_indices(length, segments, 5, train=train, rng=rng)
        assert idx.shape == (segments * 5,) and idx.dtype == np.int64
        assert idx.min() >= 0 and idx.max() < length
        runs = idx.reshape(segments, 5)
        # each run counts up one frame at a time and repeats the last frame at the video's end
        np.testing.assert_array_equal(runs, np.minimum(runs[:, :1] + np.arange(5), length - 1))
        assert np.all(np.diff(runs[:, 0]) >= 0)  # segments in time order


def test_snippet_test_starts_at_the_segment_centres_of_the_run_starts():
    # L=40, S=8: 36 run starts, tick 4.5, start_i = int(2.25 + 4.5 i)
    idx = snippet_indices(40, 8, 5, train=False)
    np.testing.assert_array_equal(_starts(idx), [2, 6, 11, 15, 20, 24, 29, 33])
    np.testing.assert_array_equal(idx[:10], [2, 3, 4, 5, 6, 6, 7, 8, 9, 10])  # frame order: snippet by snippet
    # L=13 > S + n - 1 = 12: 9 starts, tick 1.125
    np.testing.assert_array_equal(_starts(snippet_indices(13, 8, 5, train=False)), [0, 1, 2, 3, 5, 6, 7, 8])


def test_short_video_test_snippets_all_start_at_frame_zero():
    # L <= S + n - 1: the official test sampler puts every snippet at frame 0
    np.testing.assert_array_equal(snippet_indices(12, 8, 5, train=False), np.tile(np.arange(5), 8))
    np.testing.assert_array_equal(snippet_indices(3, 2, 5, train=False), [0, 1, 2, 2, 2] * 2)


def test_snippet_train_draws_a_random_start_in_each_segment():
    rng = np.random.default_rng(0)
    # L=40, S=8: 36 starts, 4 per segment (36 // 8), start_i in [4i, 4i + 3]; the tail 32..35 is never drawn
    seen = np.stack([_starts(snippet_indices(40, 8, 5, train=True, rng=rng)) for _ in range(400)])  # (400, 8)
    for i in range(8):
        assert set(seen[:, i]) == set(range(4 * i, 4 * i + 4))


def test_short_video_train_snippets():
    rng = np.random.default_rng(0)
    # 8 < L=10 < S + n - 1: 6 starts for 8 segments, so 8 sorted draws from [0, 6)
    draws = np.stack([_starts(snippet_indices(10, 8, 5, train=True, rng=rng)) for _ in range(200)])
    assert np.all(np.diff(draws, axis=1) >= 0) and draws.min() == 0 and draws.max() == 5
    # L <= S: every snippet starts at frame 0; a video shorter than a snippet repeats its last frame
    np.testing.assert_array_equal(snippet_indices(8, 8, 5, train=True, rng=rng), np.tile(np.arange(5), 8))
    np.testing.assert_array_equal(snippet_indices(2, 4, 5, train=True, rng=rng), [0, 1, 1, 1, 1] * 4)


def test_snippet_multi_clip_test_shifts_like_segments():
    one = _starts(snippet_indices(100, 4, 5, train=False))  # 96 starts, tick 24: 12, 36, 60, 84
    np.testing.assert_array_equal(one, [12, 36, 60, 84])
    views = [_starts(snippet_indices(100, 4, 5, train=False, clip_index=k, num_clips=3)) for k in range(3)]
    for view, shift in zip(views, (-1, 0, 1)):
        np.testing.assert_array_equal(view, one + shift)
    again = [_starts(snippet_indices(100, 4, 5, train=False, clip_index=k, num_clips=3)) for k in range(3)]
    np.testing.assert_array_equal(views, again)
    # shifts stay inside the segment: tick 1.125 at L=13 leaves no room to move back from start 0
    assert _starts(snippet_indices(13, 8, 5, train=False, clip_index=0, num_clips=3))[0] == 0


def test_snippet_invalid_arguments_raise():
    with pytest.raises(ValueError, match="snippet_frames=0"):
        snippet_indices(10, 2, 0, train=False)
    with pytest.raises(ValueError, match="clip_index=3"):
        snippet_indices(10, 2, 5, train=False, clip_index=3, num_clips=3)
