"""Decoding real H.264 files (decord and PyAV) and JPEG frame folders."""

import numpy as np
import pytest
from PIL import Image

from actionlab.data import decode, frame_folders
from actionlab.data.decode import DecodeError

BACKENDS = ["decord", "pyav"]
INDEX_STEP = 8  # conftest's index_video: pixel value of frame i is i * 8


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("ACTIONLAB_DECODER", request.param)
    return request.param


def _frame_values(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(1) / INDEX_STEP


def test_count_and_seek_exact_frames(backend, index_video):
    assert index_video.step == INDEX_STEP
    path = index_video(num_frames=24)
    assert decode.decoder_name() == backend
    assert decode.count_frames(path) == 24
    wanted = [17, 0, 5, 5, 23, 12]  # unsorted, repeated
    frames = decode.read_frames(path, wanted)
    assert frames.shape == (6, 32, 48, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(_frame_values(frames), wanted, atol=0.25)


def test_decord_and_pyav_agree(index_video, monkeypatch):
    path = index_video(num_frames=20)
    wanted = np.arange(0, 20, 3)
    monkeypatch.setenv("ACTIONLAB_DECODER", "decord")
    a = decode.read_frames(path, wanted).astype(int)
    monkeypatch.setenv("ACTIONLAB_DECODER", "pyav")
    b = decode.read_frames(path, wanted).astype(int)
    assert np.abs(a - b).max() <= 2  # both decode the same H.264 frames; only colour conversion differs


@pytest.mark.parametrize("options", [
    {"g": "250", "bf": "3", "crf": "10", "preset": "ultrafast"},  # keyframes as sparse as downloads have
    {"g": "7", "bf": "2", "crf": "10", "preset": "ultrafast"},  # short GOPs with B-frames: seeks between keyframes
    {"g": "1", "crf": "10", "preset": "ultrafast"},  # all intra
])
def test_pyav_seeking_reader_is_exact_for_any_keyframe_layout(tmp_path, options, monkeypatch):
    from conftest import index_frames

    from actionlab.data import synthetic

    path = tmp_path / "v.mp4"
    synthetic.write_mp4(path, index_frames(31), options=options)
    monkeypatch.setenv("ACTIONLAB_DECODER", "pyav")
    wanted = [30, 0, 8, 9, 9, 15, 16, 29, 1, 22]
    sequential = decode._pyav_read_sequential(str(path), wanted)
    monkeypatch.setattr(decode, "_pyav_read_sequential", lambda *a: pytest.fail("the seeking reader fell back"))
    frames = decode.read_frames(path, wanted)
    np.testing.assert_allclose(_frame_values(frames), wanted, atol=0.25)
    assert np.array_equal(frames, sequential)  # bit-exact: the same frames, decoded from their keyframes


def test_width_decord_cannot_handle_still_decodes(monkeypatch, index_video):
    monkeypatch.setenv("ACTIONLAB_DECODER", "decord")
    path = index_video("w48.mp4", num_frames=6, height=48, width=48)  # decord 0.6.0 fails on 48 px widths
    np.testing.assert_allclose(_frame_values(decode.read_frames(path, [1, 4])), [1, 4], atol=0.25)


@pytest.mark.parametrize("case", ["missing", "empty", "text", "truncated", "short"])
def test_errors_are_decode_errors_naming_the_file(backend, index_video, tmp_path, case):
    good = index_video(num_frames=24)
    path = tmp_path / f"{case}.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not a video\n")
    elif case == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif case == "short":
        path = good
    with pytest.raises(DecodeError) as info:
        decode.read_frames(path, [0, 12, 30 if case == "short" else 23])
    assert str(path) in str(info.value)
    expected = {"missing": "missing", "empty": "empty", "text": "corrupt", "truncated": ("corrupt", "short"), "short": "short"}
    assert info.value.kind in expected[case]


def _write_folder(folder, num_frames, size=(20, 16)):
    folder.mkdir(parents=True)
    for i in range(num_frames):
        Image.fromarray(np.full((size[1], size[0], 3), i * INDEX_STEP, np.uint8)).save(folder / f"{i + 1:05d}.jpg", quality=95)


def test_frame_folder(tmp_path):
    folder = tmp_path / "v"
    _write_folder(folder, 10)
    assert frame_folders.count_frame_files(folder) == 10
    frames = frame_folders.read_frame_folder(folder, [9, 0, 4])
    assert frames.shape == (3, 16, 20, 3)
    np.testing.assert_allclose(_frame_values(frames), [9, 0, 4], atol=0.25)


def test_frame_folder_errors(tmp_path):
    folder = tmp_path / "v"
    _write_folder(folder, 3)
    with pytest.raises(DecodeError, match="00005.jpg"):
        frame_folders.read_frame_folder(folder, [0, 4])
    (folder / "00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DecodeError, match="00002.jpg is not a readable image"):
        frame_folders.read_frame_folder(folder, [1])
    with pytest.raises(DecodeError, match="does not exist") as info:
        frame_folders.read_frame_folder(tmp_path / "nope", [0])
    assert info.value.kind == "missing"


def test_jpeg_decoders_agree_and_draft_decodes_at_a_reduced_scale(tmp_path):
    """torchvision's libjpeg-turbo and PIL give the same frames; `pil_draft` decodes a frame stored at
    2x the needed short side at half scale (libjpeg's scaled IDCT), which resizing would give anyway."""
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (8, 12, 3)), np.ones((16, 16, 1))).astype(np.uint8)  # (128, 192, 3)
    Image.fromarray(smooth).save(tmp_path / "00001.jpg", quality=95)
    pil = frame_folders.read_frame_folder(tmp_path, [0])
    turbo = frame_folders.read_frame_folder(tmp_path, [0], jpeg="torchvision")
    assert turbo.shape == pil.shape == (1, 128, 192, 3)
    assert np.abs(turbo.astype(int) - pil.astype(int)).max() <= 2  # the same library; IDCT rounding at most
    half = frame_folders.read_frame_folder(tmp_path, [0], jpeg="pil_draft", short_px=64)
    assert half.shape == (1, 64, 96, 3)
    pooled = pil.reshape(1, 64, 2, 96, 2, 3).mean((2, 4))  # (1, 64, 96, 3): what a 2x area resize gives
    assert np.abs(half.astype(float) - pooled).mean() < 6  # measured 3.9: block edges of random colours
    assert frame_folders.read_frame_folder(tmp_path, [0], jpeg="pil_draft", short_px=100).shape == (1, 128, 192, 3)
    with pytest.raises(ValueError, match="jpeg decoder 'gpu'"):
        frame_folders.read_frame_folder(tmp_path, [0], jpeg="gpu")


@pytest.mark.parametrize("options,from_index", [
    ({"g": "1", "crf": "10", "preset": "ultrafast"}, True),  # all intra, as `data prepare` writes
    ({"g": "7", "bf": "0", "crf": "10", "preset": "ultrafast"}, True),  # GOPs without B-frames
    ({"g": "7", "bf": "2", "crf": "10", "preset": "ultrafast"}, False),  # reordering: index times are decode times
])
def test_frame_index_comes_from_the_container_only_without_reordering(tmp_path, options, from_index, monkeypatch):
    import av
    from conftest import index_frames

    from actionlab.data import synthetic

    path = tmp_path / "v.mp4"
    synthetic.write_mp4(path, index_frames(31), options=options)
    with av.open(str(path)) as a, av.open(str(path)) as b:
        fast, demuxed = decode._pyav_index(a, a.streams.video[0]), decode._pyav_index_demuxed(b, b.streams.video[0])
    assert np.array_equal(fast[0], demuxed[0]) and np.array_equal(fast[1], demuxed[1])
    if from_index:
        monkeypatch.setattr(decode, "_pyav_index_demuxed", lambda *a: pytest.fail("demuxed the packets"))
    if options["g"] == "1":  # every frame a keyframe: the wanted frames' entries are all a clip reads
        monkeypatch.setattr(decode, "_pyav_index", lambda *a: pytest.fail("read the whole index"))
    monkeypatch.setenv("ACTIONLAB_DECODER", "pyav")

    def misconfigured(num_frames):
        raise ValueError("stride=0 is not a stride")

    with pytest.raises(ValueError, match="stride=0"):  # the sampler's own error, not "the file is corrupt"
        decode.read_sampled(path, misconfigured, decoder="pyav")
    wanted = [30, 0, 8, 9, 15, 29]
    np.testing.assert_allclose(_frame_values(decode.read_frames(path, wanted)), wanted, atol=0.25)
    # All-intra MP4s are read from their sample table (test_data_mp4); other all-intra files (colour boxes,
    # MOV) take the demuxer, which must read no more of the index either.
    demuxed, count = decode._demuxed_read(str(path), lambda n: np.asarray(wanted), "rgb", 0.0)
    assert count == 31
    np.testing.assert_allclose(_frame_values(demuxed), wanted, atol=0.25)
