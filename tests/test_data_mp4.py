"""The MP4 sample table (data/mp4.py) against FFmpeg's demuxer, and the reader that decodes all-intra
clips from it (no av.open) against the demuxing reader."""

import os

import av
import numpy as np
import pytest
from conftest import index_frames

from actionlab.data import decode, encode, mp4, yuv
from actionlab.data.decode import DecodeError

ALL_INTRA = {"g": "1", "crf": "10", "preset": "ultrafast"}


def _write(path, *, options=None, fmt="mp4", movflags="faststart", num_frames=31, height=32, width=48,
           audio=False):
    """An H.264 file of index frames (frame i's pixels = 8 i) in container `fmt`; with `audio`, a sound
    track interleaved with it (the video's samples then lie in many chunks)."""
    with av.open(str(path), mode="w", format=fmt, options={"movflags": movflags} if movflags else {}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(options or ALL_INTRA)
        sound = container.add_stream("aac", rate=8000) if audio else None
        for t, frame in enumerate(index_frames(num_frames, height=height, width=width)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            if sound is not None:
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 266), np.float32), format="fltp", layout="mono")
                samples.sample_rate, samples.pts = 8000, t * 266
                container.mux(sound.encode(samples))
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            container.mux(sound.encode())
    return path


def _table(path) -> mp4.SampleTable | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return mp4.sample_table(fd)
    finally:
        os.close(fd)


def _demuxed(path) -> tuple[list, list, list, int]:
    """(offset, size, keyframe) of each packet as FFmpeg's demuxer reads them, and the stream's frame count."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        return [p.pos for p in packets], [p.size for p in packets], [p.is_keyframe for p in packets], stream.frames


@pytest.mark.parametrize("options,movflags,audio", [
    (ALL_INTRA, "faststart", False),  # what data prepare writes: moov first
    (ALL_INTRA, "", False),  # moov after the media data
    (ALL_INTRA, "faststart", True),  # a sound track between the video's chunks: several stsc runs
    ({"g": "7", "bf": "0", "crf": "10", "preset": "ultrafast"}, "faststart", False),  # keyframes apart: stss
])
def test_table_is_where_ffmpeg_reads_each_frame(tmp_path, options, movflags, audio):
    path = _write(tmp_path / "v.mp4", options=options, movflags=movflags, audio=audio)
    table = _table(path)
    offsets, sizes, keys, frames = _demuxed(path)
    assert table is not None and table.codec == "h264"
    assert len(table) == frames == 31
    assert table.offsets.tolist() == offsets and table.sizes.tolist() == sizes
    sync = np.ones(31, bool) if table.sync is None else table.sync
    assert sync.tolist() == keys
    with av.open(str(path)) as container:
        assert table.extradata == container.streams.video[0].codec_context.extradata


def test_prepared_copies_are_served(tmp_path):
    source = _write(tmp_path / "src.mp4", options={"g": "250", "bf": "3", "crf": "10", "preset": "ultrafast"},
                    num_frames=40, height=96, width=128)
    prepared = tmp_path / "prepared.mp4"
    encode.encode_video(str(source), str(prepared), encode.EncodeSettings(short_side_px=64))
    table = _table(prepared)
    offsets, sizes, keys, frames = _demuxed(prepared)
    assert table is not None and len(table) == frames == 40 and all(keys)
    assert table.offsets.tolist() == offsets and table.sizes.tolist() == sizes and table.all_sync(range(40))


def _patched(path, box: bytes, skip: int, value: int) -> None:
    """Overwrites the u32 `skip` bytes into the first `box` payload of the file at `path`."""
    data = bytearray(path.read_bytes())
    at = data.index(box) + 4 + skip
    data[at : at + 4] = value.to_bytes(4, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["reordered", "fragmented", "matroska", "shifted edit", "short edit", "colour box",
                                  "movie timescale 0", "truncated moov", "text"])
def test_what_the_table_does_not_serve_is_left_to_ffmpeg(tmp_path, case):
    path = tmp_path / "v.mp4"
    if case == "reordered":  # B-frames: decode order is not display order (ctts)
        _write(path, options={"g": "7", "bf": "2", "crf": "10", "preset": "ultrafast"})
    elif case == "fragmented":  # samples in moof boxes
        _write(path, movflags="frag_keyframe+empty_moov")
    elif case == "matroska":
        _write(path, fmt="matroska", movflags="")
    elif case == "shifted edit":  # an edit list whose media starts at frame 1: FFmpeg drops frame 0
        _patched(_write(path), b"elst", 12, 512)  # media_time (after version/flags, count, duration): 1 frame
    elif case == "short edit":  # an edit that ends before the last frame shows: FFmpeg drops it
        _patched(_write(path), b"elst", 8, 1000)  # segment duration: 1 s of the movie's 1000 Hz, media 31/30 s
    elif case == "colour box":  # colour tags in the container only: FFmpeg gives them to the decoder
        _write(path, options={**ALL_INTRA, "x264-params": "colormatrix=bt709"})
        data = path.read_bytes()
        path.write_bytes(data.replace(b"btrt", b"colr"))  # as long as btrt; what matters is the box's type
    elif case == "movie timescale 0":  # FFmpeg reads it with a timescale of its own
        _patched(_write(path), b"mvhd", 12, 0)  # after version/flags and the two v0 times
    elif case == "truncated moov":
        good = _write(tmp_path / "good.mp4").read_bytes()
        path.write_bytes(good[: good.index(b"stsz")])
    else:
        path.write_text("this is not a video\n")
    assert _table(path) is None


def test_a_damaged_table_is_left_to_ffmpeg_and_reading_gives_frames_or_a_decode_error(tmp_path):
    """Any u32 of the moov overwritten with 0, 1 or a huge value: the table is served or refused, never
    raises, never allocates for counts the file cannot hold; the reader gives frames or a DecodeError."""
    good = _write(tmp_path / "good.mp4").read_bytes()
    start = good.index(b"moov") + 4
    end = start + int.from_bytes(good[start - 8 : start - 4], "big") - 8
    rng = np.random.default_rng(0)
    path = tmp_path / "v.mp4"
    for at in rng.choice(np.arange(start, end - 4, 4), 120, replace=False):
        for value in (0, 1, 0xFFFFFFF0):
            data = bytearray(good)
            data[at : at + 4] = value.to_bytes(4, "big")
            path.write_bytes(bytes(data))
            _table(path)
            try:
                decode.read_sampled(path, lambda n: np.arange(min(n, 3)), decoder="pyav", pixels="yuv420")
            except DecodeError:
                pass


def test_all_intra_clips_are_read_without_the_demuxer_and_equal_its_frames(tmp_path, monkeypatch):
    """Bit-identical planes and RGB frames; av.open is never called for such a clip."""
    path = str(_write(tmp_path / "v.mp4", height=64, width=96))
    wanted = [30, 0, 8, 9, 9, 15, 29]
    for pixels in ("yuv420", "rgb"):
        demuxed, count = decode._demuxed_read(path, lambda n: np.asarray(wanted), pixels, 0.0)
        monkeypatch.setattr(av, "open", lambda *a, **k: pytest.fail("opened with FFmpeg's demuxer"))
        direct, direct_count = decode.read_sampled(path, lambda n: np.asarray(wanted), decoder="pyav", pixels=pixels)
        monkeypatch.undo()
        assert direct_count == count == 31
        if pixels == "yuv420":
            assert isinstance(direct, yuv.Planes)
            assert all(np.array_equal(getattr(direct, p), getattr(demuxed, p)) for p in "yuv")
        else:
            assert direct.shape == (7, 64, 96, 3) and np.array_equal(direct, demuxed)
            np.testing.assert_allclose(direct.reshape(7, -1).mean(1) / 8, wanted, atol=0.25)


def test_clips_with_frames_between_keyframes_go_through_the_demuxer_with_the_frames_drawn(tmp_path, monkeypatch):
    path = _write(tmp_path / "v.mp4", options={"g": "7", "bf": "0", "crf": "10", "preset": "ultrafast"})
    draws = []

    def sampler(num_frames):  # a random sampler: drawn once, whichever reader decodes
        draws.append(np.random.default_rng(len(draws)).choice(num_frames, 4, replace=False))
        return draws[-1]

    monkeypatch.setattr(decode, "_samples_read", lambda *a: pytest.fail("read frames that are not keyframes alone"))
    frames, count = decode.read_sampled(path, sampler, decoder="pyav")
    assert count == 31 and len(draws) == 1
    np.testing.assert_allclose(frames.reshape(4, -1).mean(1) / 8, draws[0], atol=0.25)


def test_a_frame_past_the_end_of_a_truncated_file_is_a_decode_error(tmp_path):
    good = _write(tmp_path / "good.mp4")
    path = tmp_path / "cut.mp4"
    path.write_bytes(good.read_bytes()[: _table(good).offsets[20] + 1])  # moov first: the table is whole, frames 20+ are not
    assert _table(path) is not None
    np.testing.assert_allclose(decode.read_frames(path, [0, 3], decoder="pyav").reshape(2, -1).mean(1) / 8, [0, 3],
                               atol=0.25)
    with pytest.raises(DecodeError, match="lies past the end of the file.*truncated") as info:
        decode.read_frames(path, [0, 30], decoder="pyav")
    assert info.value.kind == "corrupt" and str(path) in str(info.value)


def test_a_decoder_that_holds_frames_back_is_drained(tmp_path, monkeypatch):
    """A decoder that returns a picture only when drained (delayed output) still gives every frame."""
    path = _write(tmp_path / "v.mp4")
    create = av.CodecContext.create
    drained = []

    class Delaying:
        def __init__(self, *args):
            self.inner = create(*args)

        def __setattr__(self, name, value):  # the reader's settings go to the real decoder
            if name in ("inner", "held"):
                object.__setattr__(self, name, value)
            else:
                setattr(self.inner, name, value)

        def decode(self, packet):
            frames = self.inner.decode(packet)
            if packet is not None:
                self.held = frames
                return []
            drained.append(True)
            return self.held + frames

        def flush_buffers(self):
            self.inner.flush_buffers()

    monkeypatch.setattr(av.CodecContext, "create", Delaying)
    wanted = [3, 17, 25]
    frames = decode.read_frames(path, wanted, decoder="pyav")
    assert len(drained) == 3
    np.testing.assert_allclose(frames.reshape(3, -1).mean(1) / 8, wanted, atol=0.25)


def test_frames_tagged_bt709_come_back_as_rgb_from_either_reader(tmp_path):
    """A stream whose colours are not BT.601 limited range keeps swscale's RGB (yuv.av_planes refuses it)."""
    path = _write(tmp_path / "v.mp4", options={**ALL_INTRA, "x264-params": "colormatrix=bt709"})
    assert _table(path) is not None
    wanted = [2, 11, 30]
    direct, _ = decode.read_sampled(path, lambda n: np.asarray(wanted), decoder="pyav", pixels="yuv420")
    demuxed, _ = decode._demuxed_read(str(path), lambda n: np.asarray(wanted), "yuv420", 0.0)
    rgb = decode.read_frames(path, wanted, decoder="pyav")
    assert isinstance(direct, np.ndarray) and np.array_equal(direct, rgb) and np.array_equal(demuxed, rgb)
