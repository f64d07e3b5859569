"""Where each frame of an MP4 lies: the video track's sample table, read from the file's `moov` box.

In an all-intra file (what `data prepare` writes) every frame decodes from its own bytes, so a clip
needs no demuxer: `frames` reads its frames' samples at their offsets and decodes each alone with an
H.264 decoder made from the track's `avcC` record. Opening the file with FFmpeg (`av.open`: the demuxer,
its index, `find_stream_info`) took ~2 ms of the ~7 ms a prepared clip cost; this table takes ~0.05 ms.

Only what that path needs is read (ISO/IEC 14496-12 boxes: `stsd`, `stts`, `stsz`, `stsc`,
`stco`/`co64`, `stss`, `ctts`, `elst`). `sample_table` returns None for anything it does not serve the
way FFmpeg's demuxer would (not ISO BMFF, fragmented, no `avc1` track, several sample descriptions,
colour or crop boxes beside `avcC` that FFmpeg would pass to the decoder, frames reordered, an edit
list that shifts or trims the track, a table larger than the file), and the reader goes through
FFmpeg as before.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

_CODECS = {b"avc1": "h264"}  # sample entry -> FFmpeg decoder (avc1: parameter sets in avcC, not in-band)
# Boxes a sample entry may hold besides avcC and still decode as avcC alone says (bit rates, pixel aspect);
# others (colr: colour tags, clap: a crop, ...) FFmpeg's demuxer applies to the frames: those files go there.
_HARMLESS = {b"avcC", b"btrt", b"pasp"}
_VISUAL_ENTRY_BYTES = 78  # a VisualSampleEntry's fields before its child boxes (ISO/IEC 14496-12 12.1.3)
_MAX_MOOV_BYTES = 256 << 20  # a moov past this is not a table to parse per clip


@dataclass(frozen=True)
class SampleTable:
    """The first video track's samples, in decode order (= display order: no reordering is served)."""

    codec: str  # FFmpeg decoder name
    extradata: bytes  # the decoder's configuration record (avcC)
    offsets: np.ndarray  # (N,) int64 byte offset of sample i in the file
    sizes: np.ndarray  # (N,) int64 byte size of sample i
    sync: np.ndarray | None  # (N,) bool: sample i decodes from itself; None when every sample does
    file_size: int  # bytes of the file the table was read from

    def __len__(self) -> int:
        return len(self.sizes)

    def all_sync(self, indices: Sequence[int]) -> bool:
        """Whether every sample of `indices` decodes from itself (a keyframe)."""
        return self.sync is None or bool(np.all(self.sync[np.asarray(indices, dtype=np.int64)]))


def sample_table(fd: int) -> SampleTable | None:
    """The sample table of the open file `fd`'s first video track, or None where FFmpeg's demuxer
    should read the file (see the module docstring). Never raises for a malformed file: None."""
    try:
        file_size = os.fstat(fd).st_size
        moov = _read_moov(fd, file_size)
        return _video_table(moov, file_size) if moov is not None else None
    except (ValueError, KeyError, IndexError, struct.error, OSError, ArithmeticError):
        return None


def frames(fd: int, table: SampleTable, indices: Iterable[int]) -> Iterator[tuple[int, object]]:
    """(index, av.VideoFrame) of each sample of `indices` (each a sync sample: `all_sync`), read at
    its offset and decoded by one single-threaded decoder made from the table's configuration.

    Raises:
        EOFError: a sample lies past the end of the file (truncated).
        ValueError / av errors: a sample does not decode (corrupt).
    """
    import av

    decoder = av.CodecContext.create(table.codec, "r")  # made here, not on the first frame: it is the clip's opening
    decoder.extradata = table.extradata
    decoder.thread_count = 1
    return _decoded(fd, table, decoder, indices)


def _decoded(fd: int, table: SampleTable, decoder, indices: Iterable[int]) -> Iterator[tuple[int, object]]:
    import av

    for index in indices:
        size, offset = int(table.sizes[index]), int(table.offsets[index])
        if offset + size > table.file_size:
            raise EOFError(f"frame {index} lies past the end of the file ({offset + size} > {table.file_size} bytes)")
        out = decoder.decode(av.Packet(os.pread(fd, size, offset))) or _drain(decoder)
        if not out:
            raise ValueError(f"frame {index} gave no picture")
        yield index, out[-1]


def _drain(decoder) -> list:
    """The frames a decoder holds back (one that delays output), leaving it ready for the next packet."""
    frames = decoder.decode(None)
    decoder.flush_buffers()
    return frames


def _header(buf: bytes, pos: int, end: int) -> tuple[bytes, int, int]:
    """(type, header bytes, box bytes) of the box at buf[pos:], which must end by `end`."""
    size, kind = struct.unpack_from(">I4s", buf, pos)
    header = 8
    if size == 1:
        (size,), header = struct.unpack_from(">Q", buf, pos + 8), 16
    elif size == 0:
        size = end - pos  # to the end of the enclosing box (or file)
    if size < header or pos + size > end:
        raise ValueError(f"box {kind!r} at {pos} overruns its parent")
    return kind, header, size


def _boxes(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in buf[start:end]."""
    pos = start
    while pos + 8 <= end:
        kind, header, size = _header(buf, pos, end)
        yield kind, pos + header, pos + size
        pos += size


def _children(buf: bytes, span: tuple[int, int]) -> dict[bytes, tuple[int, int]]:
    """The first box of each type inside span: type -> (payload start, end)."""
    out: dict[bytes, tuple[int, int]] = {}
    for kind, start, end in _boxes(buf, *span):
        out.setdefault(kind, (start, end))
    return out


def _read_moov(fd: int, file_size: int) -> bytes | None:
    """The moov box's payload, found by walking the file's top-level boxes (a few reads)."""
    pos = 0
    while pos + 8 <= file_size:
        kind, header, size = _header(os.pread(fd, 16, pos), 0, file_size - pos)  # ValueError when truncated
        if kind == b"moov":
            if size > _MAX_MOOV_BYTES:
                return None
            payload = os.pread(fd, size - header, pos + header)
            return payload if len(payload) == size - header else None
        if pos == 0 and kind != b"ftyp":
            return None  # ISO BMFF files start with ftyp (MOV files without one go through FFmpeg)
        pos += size
    return None


def _full_box(buf: bytes, span: tuple[int, int]) -> tuple[int, int]:
    """(version, payload start after the version/flags word) of a FullBox."""
    return buf[span[0]], span[0] + 4


def _video_table(moov: bytes, file_size: int) -> SampleTable | None:
    top = (0, len(moov))
    movie = _children(moov, top)
    if b"mvex" in movie:
        return None  # fragmented: samples live in moof boxes
    movie_timescale = _timescale(moov, movie[b"mvhd"])
    if not movie_timescale:
        return None  # FFmpeg reads such files with a timescale of its own choosing
    for kind, start, end in _boxes(moov, *top):
        if kind != b"trak":
            continue
        trak = _children(moov, (start, end))
        mdia = _children(moov, trak[b"mdia"])
        if moov[mdia[b"hdlr"][0] + 8 : mdia[b"hdlr"][0] + 12] != b"vide":
            continue
        media_timescale = _timescale(moov, mdia[b"mdhd"])
        stbl = _children(moov, _children(moov, mdia[b"minf"])[b"stbl"])
        # The first video track is the one FFmpeg's reader takes (`streams.video[0]`): served or not.
        if not media_timescale or not _plain_timeline(moov, trak, stbl, movie_timescale, media_timescale):
            return None
        return _samples(moov, stbl, file_size)
    return None


def _timescale(buf: bytes, span: tuple[int, int]) -> int:
    """mvhd's or mdhd's timescale (units per second)."""
    version, at = _full_box(buf, span)
    return struct.unpack_from(">I", buf, at + (16 if version == 1 else 8))[0]


def _plain_timeline(moov: bytes, trak: dict, stbl: dict, movie_timescale: int, media_timescale: int) -> bool:
    """True when sample i is displayed i-th and none is cut: no reordering (ctts absent or one constant
    offset) and no edit list, or one edit that starts the media at 0 at normal rate and lasts past the
    last sample's display time (as FFmpeg's muxer writes for streams without B-frames)."""
    offset = 0  # display time - decode time, the same for every sample
    if b"ctts" in stbl:
        _, at = _full_box(moov, stbl[b"ctts"])
        runs = struct.unpack_from(">I", moov, at)[0]
        if runs > 1:
            return False  # offsets differ between samples: frames are reordered
        offset = struct.unpack_from(">i", moov, at + 8)[0] if runs else 0
    if b"edts" not in trak or b"elst" not in _children(moov, trak[b"edts"]):
        return True
    version, at = _full_box(moov, _children(moov, trak[b"edts"])[b"elst"])
    if struct.unpack_from(">I", moov, at)[0] != 1:
        return False
    segment, media_time, rate = struct.unpack_from(">QqI" if version == 1 else ">IiI", moov, at + 4)
    if media_time != 0 or rate != 0x00010000:
        return False
    _, at = _full_box(moov, stbl[b"stts"])
    runs = np.frombuffer(moov, ">u4", 2 * struct.unpack_from(">I", moov, at)[0], at + 4).astype(np.int64)
    counts, deltas = runs[0::2], runs[1::2]  # runs of samples with one duration each
    if not len(counts):
        return False
    last_shown = int(counts @ deltas) - int(deltas[-1]) + offset  # the last sample's display time, media units
    return last_shown * movie_timescale < segment * media_timescale  # FFmpeg keeps what starts inside the edit


def _samples(moov: bytes, stbl: dict, file_size: int) -> SampleTable | None:
    _, at = _full_box(moov, stbl[b"stsd"])
    if struct.unpack_from(">I", moov, at)[0] != 1:
        return None  # several sample descriptions: samples may switch decoder configuration
    kind, entry_start, entry_end = next(_boxes(moov, at + 4, stbl[b"stsd"][1]), (b"", 0, 0))
    if kind not in _CODECS:
        return None
    inside = _children(moov, (entry_start + _VISUAL_ENTRY_BYTES, entry_end))
    if b"avcC" not in inside or not inside.keys() <= _HARMLESS:
        return None
    config = inside[b"avcC"]

    _, at = _full_box(moov, stbl[b"stsz"])
    fixed_size, count = struct.unpack_from(">II", moov, at)
    if count == 0 or count * max(fixed_size, 1) > file_size:
        return None  # no samples, or more bytes than the file has
    sizes = (np.full(count, fixed_size, np.int64) if fixed_size
             else np.frombuffer(moov, ">u4", count, at + 8).astype(np.int64))  # (N,)

    if b"stco" in stbl:
        _, at = _full_box(moov, stbl[b"stco"])
        chunk_offsets = np.frombuffer(moov, ">u4", struct.unpack_from(">I", moov, at)[0], at + 4).astype(np.int64)
    else:
        _, at = _full_box(moov, stbl[b"co64"])
        chunk_offsets = np.frombuffer(moov, ">u8", struct.unpack_from(">I", moov, at)[0], at + 4).astype(np.int64)
    num_chunks = len(chunk_offsets)

    _, at = _full_box(moov, stbl[b"stsc"])
    runs = np.frombuffer(moov, ">u4", 3 * struct.unpack_from(">I", moov, at)[0], at + 4)
    runs = runs.astype(np.int64).reshape(-1, 3)  # (R, 3): first chunk (1-based), samples per chunk, description
    first_chunk = runs[:, 0] - 1
    if not len(runs) or first_chunk[0] != 0 or np.any(np.diff(first_chunk) <= 0) or first_chunk[-1] >= num_chunks:
        return None
    per_chunk = np.repeat(np.minimum(runs[:, 1], count), np.diff(np.append(first_chunk, num_chunks)))  # (C,)
    through = np.cumsum(per_chunk)  # (C,) samples in chunks 0..c
    if through[-1] < count:
        return None
    chunk_of = np.searchsorted(through, np.arange(count), side="right")  # (N,) chunk of sample i
    first_of_chunk = through - per_chunk  # (C,) index of each chunk's first sample
    ends = np.cumsum(sizes)  # (N,) bytes up to and including sample i
    offsets = chunk_offsets[chunk_of] + (ends - sizes) - (ends - sizes)[first_of_chunk[chunk_of]]

    sync = None
    if b"stss" in stbl:
        _, at = _full_box(moov, stbl[b"stss"])
        numbers = np.frombuffer(moov, ">u4", struct.unpack_from(">I", moov, at)[0], at + 4).astype(np.int64)
        sync = np.zeros(count, bool)
        sync[numbers[(numbers >= 1) & (numbers <= count)] - 1] = True
    return SampleTable(_CODECS[kind], bytes(moov[config[0] : config[1]]), offsets, sizes, sync, file_size)
