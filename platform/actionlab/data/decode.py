"""Decoding sampled frames from video files (decord, PyAV fallback); JPEG frame folders are `data.frames`.

Every failure raises `DecodeError(path, reason)`, so callers catch one type. A decord reader is
created inside each call: a reader made before a fork hangs in DataLoader workers (dmlc/decord#294),
and short-lived readers sidestep decord's reported leaks. `ACTIONLAB_DECODER=decord|pyav` picks the
backend; by default decord when it imports (no wheels for aarch64/macOS arm64), else PyAV.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np

from actionlab.data import mp4, profile, yuv

# The choice lists below are declared here once: `data.decoder` / `data.pixels` of the
# config, the CLI and the benchmarks read these Literals (or the tuples derived from them).
Decoder = Literal["decord", "pyav"]
DECODERS = get_args(Decoder)
_PACKAGES = {"decord": "decord", "pyav": "av"}  # what each video decoder imports
# What video decoders hand over: RGB frames, or YUV 4:2:0 planes (PyAV only: decord 0.6.0 converts every
# frame to RGB inside its own filter graph and has no option to skip that).
Pixels = Literal["rgb", "yuv420"]
PIXELS = get_args(Pixels)


class DecodeError(Exception):
    """A video or frame folder that cannot give the requested frames.

    Attributes:
        path: the file or folder.
        reason: what is wrong, for people.
        kind: `missing`, `empty`, `corrupt` or `short` (for counting bad samples by cause).
    """

    def __init__(self, path: str | os.PathLike, reason: str, kind: str = "corrupt"):
        self.path = os.fspath(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")


def decoder_name(preferred: str = "") -> str:
    """The video backend to use: `ACTIONLAB_DECODER` when set, else `preferred`, else decord when
    importable, else PyAV.

    Args:
        preferred: `decord`, `pyav`, or '' / `auto` for the default (e.g. a prepared manifest's hint).
    """
    wanted = os.environ.get("ACTIONLAB_DECODER", "").strip().lower() or preferred.strip().lower()
    if wanted and wanted != "auto":
        if wanted not in DECODERS:
            raise ValueError(f"decoder {wanted!r} is not one of {list(DECODERS)} (ACTIONLAB_DECODER / data.decoder)")
        return wanted
    try:
        import decord  # noqa: F401
    except ImportError:
        return "pyav"
    return "decord"


def available_decoders() -> list[str]:
    """The video decoders of `DECODERS` whose package imports on this machine."""
    out = []
    for name in DECODERS:
        try:
            __import__(_PACKAGES[name])
        except Exception:  # noqa: BLE001  (a broken install counts as absent, whatever it raises)
            continue
        out.append(name)
    return out


def check_file(path: str) -> None:
    """Raises `DecodeError` (missing or empty) before a decoder is asked to open `path`."""
    if not os.path.exists(path):
        raise DecodeError(path, "file does not exist; fix the manifest path or the data root", "missing")
    if os.path.isdir(path):
        raise DecodeError(path, "is a folder, not a video; set media='frames' for JPEG frame folders", "corrupt")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "file is empty (0 bytes); re-download or re-encode it", "empty")


def _as_indices(path: str, indices: Sequence[int] | np.ndarray, num_frames: int) -> list[int]:
    wanted = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not wanted:
        raise DecodeError(path, "no frame indices were requested")
    if min(wanted) < 0 or max(wanted) >= num_frames:
        raise DecodeError(
            path,
            f"video has {num_frames} frames but frame {max(wanted) if max(wanted) >= num_frames else min(wanted)} "
            "was requested; fix num_frames/start/end in the manifest or drop the video",
            "short",
        )
    return wanted


def _decord_read(path: str, choose: Callable[[int], np.ndarray]) -> tuple[np.ndarray, int]:
    import decord

    tick = profile.clock()
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord raises RuntimeError/DECORDError for any unreadable file
        raise DecodeError(path, _unreadable(err)) from None
    try:
        num_frames = len(reader)
        if num_frames < 1:
            raise DecodeError(path, "video has no frames", "short")
        wanted = _as_indices(path, choose(num_frames), num_frames)
        tick = profile.lap("open", tick)
        try:
            batch = reader.get_batch(wanted)  # seeks, decodes and converts to RGB in one call
            tick = profile.lap("decode", tick)
            frames = batch.asnumpy()  # (N, H, W, 3)
            profile.lap("convert", tick)
        except Exception as err:
            decord_error = first_line(err)
        else:
            decord_error = ""
    finally:
        del reader
    if decord_error:
        # decord 0.6.0 fails on some valid files (e.g. H.264 widths 16, 24, 48, 72 px: "The size must
        # exactly match"); PyAV decides whether the file is really broken.
        try:
            return _pyav_read(path, lambda _: np.asarray(wanted))
        except DecodeError as err:
            reason = f"decoding frames failed (decord: {decord_error}; PyAV: {err.reason})"
            raise DecodeError(path, reason, err.kind) from None
    if frames.shape[0] != len(wanted):
        raise DecodeError(path, f"decoded {frames.shape[0]} of {len(wanted)} requested frames", "short")
    return frames, num_frames


def _pyav_count(container, stream) -> int:
    if stream.frames:
        return int(stream.frames)
    return sum(1 for packet in container.demux(stream) if packet.size)  # no index: count packets


_AVINDEX_KEYFRAME, _AVINDEX_DISCARD_FRAME = 1, 2  # FFmpeg's AVIndexEntry flags


def _pyav_index(container, stream) -> tuple[np.ndarray, np.ndarray]:
    """(pts of frame i in display order, pts of the keyframe that frame i decodes from).

    Streams without frame reordering (no B-frames, as `data prepare` writes) whose container index
    (FFmpeg's, read with the header: MP4's sample table) lists every frame take it from there: no
    packet is read. Otherwise the packets are demuxed (headers and data, no decoding): about 3 ms for
    a 10 s all-intra 256p file, a millisecond for a sparse-keyframe one. In the index, timestamps are
    decode times, equal to display times only without reordering, hence the guard.
    """
    if not _table_count(stream):
        return _pyav_index_demuxed(container, stream)
    entries = stream.index_entries
    # One pass over the entries (each attribute read is a Python call: three passes cost ~0.6 ms).
    rows = np.array([(entry.timestamp, entry.flags) for entry in entries], dtype=np.int64)  # (N, 2)
    display, flags = rows[:, 0], rows[:, 1]
    if (display[0] != (stream.start_time or 0) or np.any(flags & _AVINDEX_DISCARD_FRAME)
            or not np.all(np.diff(display) > 0)):
        return _pyav_index_demuxed(container, stream)
    is_key = (flags & _AVINDEX_KEYFRAME) != 0
    return display, _keyframe_pts(display, is_key)


def _table_count(stream) -> int:
    """Frames counted by the container's index table where it can serve (no reordering, one entry a
    frame, as `_pyav_index` asks); 0 otherwise."""
    if stream.codec_context.has_b_frames:
        return 0
    count = len(stream.index_entries)
    return count if count == (stream.frames or -1) else 0


def _pyav_keyframe_pts(stream, indices: list[int]) -> np.ndarray | None:
    """Display pts of frames `indices` (sorted, distinct) read from those entries of the container's
    index alone, where the table counts the frames (`_table_count`, checked by the caller) and each of
    them is a keyframe (all-intra files, as `data prepare` writes: every frame decodes from itself); None
    otherwise. A clip reads a few entries, not the whole table (300 for a 10 s file: ~0.3 ms a clip)."""
    entries = stream.index_entries
    if entries[0].timestamp != (stream.start_time or 0) or entries[0].is_discard:
        return None
    picked = [entries[i] for i in indices]
    if not all(entry.is_keyframe and not entry.is_discard for entry in picked):
        return None
    pts = np.array([entry.timestamp for entry in picked], dtype=np.int64)
    return pts if np.all(np.diff(pts) > 0) else None


def _pyav_index_demuxed(container, stream) -> tuple[np.ndarray, np.ndarray]:
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size and packet.pts is not None:
            pts.append(packet.pts)
            keys.append(packet.is_keyframe)
    order = np.argsort(pts, kind="stable")
    display = np.asarray(pts, dtype=np.int64)[order]  # (N,) display order
    return display, _keyframe_pts(display, np.asarray(keys, dtype=bool)[order])


def _keyframe_pts(display: np.ndarray, is_key: np.ndarray) -> np.ndarray:
    """(N,) pts of the last keyframe at or before each frame (display order)."""
    is_key = is_key.copy()
    if len(display) and not is_key[0]:
        is_key[0] = True  # an open first GOP still starts decoding at the stream's start
    key_at = np.maximum.accumulate(np.where(is_key, np.arange(len(display)), 0))  # (N,) index of the last keyframe
    return display[key_at]


def _pyav_read(
    path: str, choose: Callable[[int], np.ndarray], pixels: str = "rgb"
) -> tuple[np.ndarray | yuv.Planes, int]:
    """Exact frames: an all-intra clip of an MP4 straight from its samples (`_samples_read`); else by
    seeking, each wanted frame decoded from its own keyframe, or by decoding on from the frame before
    when no keyframe lies between (short-GOP files cost a few frames each; files with sparse
    keyframes cost about one sequential pass).

    With `pixels="yuv420"` the frames come back as planes, unless the stream is not BT.601
    limited-range yuv420p (`yuv.av_planes`): then as RGB, converted by swscale as before."""
    tick = profile.clock()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        fix = "check the file's permissions" if err.errno in (errno.EACCES, errno.EPERM) else "check the file"
        raise DecodeError(path, f"cannot be opened ({err.strerror}); {fix}") from None
    try:
        table = mp4.sample_table(fd)
        if table is not None:
            wanted = _as_indices(path, choose(len(table)), len(table))
            if table.all_sync(wanted):
                return _samples_read(path, fd, table, wanted, pixels, tick), len(table)
            choose = lambda _: np.asarray(wanted)  # noqa: E731  (the demuxer reads the frames drawn here)
    finally:
        os.close(fd)
    return _demuxed_read(path, choose, pixels, tick)


def _samples_read(path: str, fd: int, table: mp4.SampleTable, wanted: list[int], pixels: str,
                  tick: float) -> np.ndarray | yuv.Planes:
    """Frames whose samples each decode alone (`mp4.frames`): no demuxer, no seeking."""
    picked = _Picked(wanted, pixels)
    try:
        decoded = mp4.frames(fd, table, picked.order)
        tick = profile.lap("open", tick)
        for index, frame in decoded:
            tick = profile.lap("decode", tick)
            if not picked.add(index, frame):
                return _samples_read(path, fd, table, wanted, "rgb", tick)  # the format changed part-way
            tick = profile.lap("convert", tick)
    except EOFError as err:
        raise DecodeError(path, f"{err}: the file is truncated; re-download or re-encode it") from None
    except Exception as err:
        raise DecodeError(
            path, f"decoding frames failed ({first_line(err)}); the file is probably truncated or corrupt, "
            "re-encode it") from None
    return picked.result()


class _Picked:
    """A clip's decoded frames, copied out as each one comes (the decoder's buffer is then free again and
    the copy reads it while it is in cache: ~5% of a prepared clip, against holding the frames): YUV
    planes when asked and the stream has them (`yuv.av_planes`), else RGB frames (swscale)."""

    def __init__(self, wanted: list[int], pixels: str):
        self.wanted = wanted
        self.order = sorted(set(wanted))  # decode order: each frame once
        self.row = {index: k for k, index in enumerate(self.order)}
        self.planar = pixels == "yuv420"
        self.out: list[np.ndarray] = []  # (F, H, W) x 3 planes or (F, H, W, 3): F = len(order)
        self.filled: set[int] = set()

    def add(self, index: int, frame) -> bool:
        """Copies `frame` (an av.VideoFrame) in as frame `index`; False when it has no planes after
        frames that had them (the stream changed format part-way: read the clip again as RGB)."""
        planes = yuv.av_planes(frame) if self.planar else None
        if self.planar and planes is None:
            if self.filled:
                return False
            self.planar = False
        arrays = planes if self.planar else (frame.to_ndarray(format="rgb24"),)  # (H, W, 3) when RGB
        if not self.out:
            self.out = [np.empty((len(self.order), *a.shape), np.uint8) for a in arrays]
        for out, array in zip(self.out, arrays):
            out[self.row[index]] = array  # a frame of another size raises here (caught as a corrupt file)
        self.filled.add(index)
        return True

    def missing(self) -> set[int]:
        return set(self.order) - self.filled

    def result(self) -> np.ndarray | yuv.Planes:
        """The frames in the order asked (repeats included): `yuv.Planes` or (N, H, W, 3) uint8."""
        tick = profile.clock()
        out = self.out
        if self.wanted != self.order:
            rows = [self.row[index] for index in self.wanted]
            out = [array[rows] for array in out]
        profile.lap("convert", tick)
        return yuv.Planes(*out) if self.planar else out[0]


def _demuxed_read(
    path: str, choose: Callable[[int], np.ndarray], pixels: str, tick: float
) -> tuple[np.ndarray | yuv.Planes, int]:
    """`_pyav_read` through FFmpeg's demuxer: any container, any keyframe layout."""
    import av

    try:
        container = av.open(path)
    except Exception as err:  # PyAV raises several av.error types for unreadable files
        raise DecodeError(path, _unreadable(err)) from None
    try:
        if not container.streams.video:
            raise DecodeError(path, "file has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise DecodeError(path, "its video stream has no decoder here (an unknown or damaged codec header); "
                              "re-encode it as H.264 MP4")
        stream.codec_context.thread_count = 1

        def index(read):
            try:
                return read()
            except Exception as err:
                raise DecodeError(path, f"reading the packet index failed ({first_line(err)}); the file is corrupt") \
                    from None

        # Where the container's table counts the frames (no reordering), an all-intra clip needs only its
        # own frames' entries; otherwise the whole index is read. `choose` runs again only when the
        # packets count other frames than the table (a table with discarded entries).
        counted = index(lambda: _table_count(stream))
        pts = None
        if counted:
            num_frames, wanted = counted, _as_indices(path, choose(counted), counted)
            distinct = sorted(set(wanted))
            pts = index(lambda: _pyav_keyframe_pts(stream, distinct))
        if pts is not None:  # every wanted frame is a keyframe: it decodes from itself
            frame_pts = key_pts = dict(zip(distinct, pts.tolist()))
        else:
            frame_pts, key_pts = index(lambda: _pyav_index(container, stream))
            if not counted or len(frame_pts) != counted:
                num_frames = len(frame_pts)
                if num_frames < 1:
                    raise DecodeError(path, "video has no frames", "short")
                wanted = _as_indices(path, choose(num_frames), num_frames)
        picked = _Picked(wanted, pixels)
        decoded = None  # pts of the last frame decoded (the decoder can go on from there)
        frames = None
        tick = profile.lap("open", tick)
        try:
            for index in picked.order:
                target = int(frame_pts[index])
                if decoded is None or not (int(key_pts[index]) <= decoded < target):
                    container.seek(int(key_pts[index]), stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                    tick = profile.lap("seek", tick)
                for frame in frames:
                    decoded = frame.pts
                    if frame.pts is None or frame.pts >= target:
                        break
                else:
                    break  # the stream ended early: reported below as missing frames
                tick = profile.lap("decode", tick)
                if decoded != target:
                    break
                if not picked.add(index, frame):  # the stream changed format part-way: read the clip again as RGB
                    return _demuxed_read(path, lambda _: np.asarray(wanted), "rgb", tick)
                tick = profile.lap("convert", tick)
        except DecodeError:
            raise
        except Exception as err:
            raise DecodeError(
                path, f"decoding frames failed ({first_line(err)}); the file is probably truncated or corrupt"
            ) from None
    finally:
        container.close()
    if picked.missing():
        # Frames whose timestamps do not match their packets' (rare muxers): count them in a single pass.
        return _pyav_read_sequential(path, wanted), num_frames
    return picked.result(), num_frames


def _pyav_read_sequential(path: str, wanted: list[int]) -> np.ndarray:
    """Frames by position in one decoding pass from the start, up to the last one wanted."""
    import av

    needed, last = set(wanted), max(wanted)
    picked: dict[int, np.ndarray] = {}
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for position, frame in enumerate(container.decode(stream)):
                if position in needed:
                    picked[position] = frame.to_ndarray(format="rgb24")  # (H, W, 3)
                if position >= last:
                    break
    except Exception as err:
        raise DecodeError(
            path, f"decoding frames failed ({first_line(err)}); the file is probably truncated or corrupt"
        ) from None
    missing = needed - picked.keys()
    if missing:
        raise DecodeError(
            path, f"only {len(picked)} of {len(needed)} wanted frames decoded (first missing: {min(missing)}); "
            "the file is truncated or shorter than its header says",
            "short",
        )
    return np.stack([picked[i] for i in wanted])  # (N, H, W, 3)


def first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    # decord prefixes its messages with "[hh:mm:ss] /path/to/source.cc:LINE: ".
    text = re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", lines[0]) if lines else type(err).__name__
    return text[:200]


def _unreadable(err: Exception) -> str:
    return f"cannot open as a video ({first_line(err)}): corrupt, truncated or not a video; re-encode it as H.264 MP4"


def read_sampled(
    path: str | os.PathLike, choose: Callable[[int], np.ndarray], *, decoder: str = "", pixels: str = "rgb"
) -> tuple[np.ndarray | yuv.Planes, int]:
    """Opens a video once, asks `choose(num_frames)` for indices and decodes only those frames.

    Args:
        path: local video file.
        choose: maps the frame count to the 0-based indices to decode (any order, repeats allowed).
        decoder: preferred backend (see `decoder_name`).
        pixels: `rgb`, or `yuv420` for planes where the decoder can hand them over (PyAV, BT.601
            limited-range yuv420p streams); RGB frames otherwise.

    Returns:
        (frames (N, H, W, 3) uint8 or `yuv.Planes` of N frames, in the order asked; num_frames).

    Raises:
        DecodeError: missing, empty, unreadable, truncated, or too short for the indices.
    """
    text = os.fspath(path)
    check_file(text)
    if pixels not in PIXELS:
        raise ValueError(f"pixels={pixels!r} is not one of {list(PIXELS)} (data.pixels)")
    if decoder_name(decoder) == "decord":
        return _decord_read(text, choose)
    return _pyav_read(text, choose, pixels)


def count_frames(path: str | os.PathLike) -> int:
    """Frames in a video according to its container (decoding nothing).

    Raises:
        DecodeError: missing, empty or unreadable file.
    """
    text = os.fspath(path)
    check_file(text)
    if decoder_name() == "decord":
        import decord

        try:
            reader = decord.VideoReader(text, ctx=decord.cpu(0), num_threads=1)
        except Exception as err:
            raise DecodeError(text, _unreadable(err)) from None
        count = len(reader)
        del reader
        return count
    import av

    try:
        with av.open(text) as container:
            if not container.streams.video:
                raise DecodeError(text, "file has no video stream")
            return _pyav_count(container, container.streams.video[0])
    except DecodeError:
        raise
    except Exception as err:
        raise DecodeError(text, _unreadable(err)) from None


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray, *, decoder: str = "") -> np.ndarray:
    """Decodes the frames at 0-based `indices` (any order, repeats allowed).

    Returns:
        (N, H, W, 3) uint8 RGB frames in the order of `indices`.

    Raises:
        DecodeError: missing, empty, unreadable, truncated, or fewer frames than an index needs.
    """
    frames, _ = read_sampled(path, lambda _: np.asarray(indices), decoder=decoder)
    return frames
