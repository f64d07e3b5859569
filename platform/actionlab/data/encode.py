"""Re-encoding one video (or JPEG frame folder) for fast sampled decoding: `data prepare`'s encoder.

`EncodeSettings` says how (short side, keyframe interval, frame rate, x264 quality and tuning, or
JPEG frames); `encode_video` writes one local copy, complete or not at all. `data.prepare` runs it
over a dataset as a resumable Ray job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Literal, get_args

OutputFormat = Literal["mp4", "jpeg"]  # H.264 MP4, or a folder of `{:05d}.jpg` frames
OUTPUT_FORMATS = get_args(OutputFormat)


@dataclass(frozen=True)
class EncodeSettings:
    """How `encode_video` re-encodes a video.

    Attributes:
        short_side_px: short side after resizing (0 keeps the size); the long side keeps the aspect.
        gop: frames per keyframe interval (1 = all intra).
        fps: output frame rate (0 keeps the source's frames one for one).
        crf: x264 constant rate factor (lower = larger files, closer to the source).
        preset: x264 preset (encoding speed; decoding speed barely depends on it).
        fast_decode: x264 `tune=fastdecode` (no CABAC, no deblocking): faster decoding, larger files.
        output_format: `mp4` (H.264) or `jpeg` (a folder of `{:05d}.jpg` frames, numbered from 1).
        jpeg_quality: PIL JPEG quality for `jpeg`.
    """

    short_side_px: int = 256
    gop: int = 1
    fps: float = 0.0
    crf: int = 17
    preset: str = "veryfast"
    fast_decode: bool = True
    output_format: OutputFormat = "mp4"
    jpeg_quality: int = 90

    def __post_init__(self):
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format={self.output_format!r}: use one of {list(OUTPUT_FORMATS)}")
        if self.gop < 1:
            raise ValueError(f"gop={self.gop}: use a keyframe interval of at least 1 frame (1 = all intra)")
        if self.short_side_px and (self.short_side_px < 16 or self.short_side_px % 2):
            raise ValueError(f"short_side_px={self.short_side_px}: use an even size of at least 16 (or 0 to keep)")
        if self.fps < 0:
            raise ValueError(f"fps={self.fps}: use a positive frame rate, or 0 to keep the source's")

    def x264_options(self) -> dict:
        options = {
            "g": str(self.gop),
            "keyint_min": str(self.gop),
            "sc_threshold": "0",  # no extra keyframes at scene cuts: the interval is the bound we promise
            "bf": "0",  # no B-frames: a frame never waits on a later one
            "crf": str(self.crf),
            "preset": self.preset,
        }
        if self.fast_decode:
            options["tune"] = "fastdecode"
        return options

    def describe(self) -> str:
        size = f"short side {self.short_side_px}px" if self.short_side_px else "size kept"
        rate = f"{self.fps:g} fps" if self.fps else "source fps"
        if self.output_format == "jpeg":
            return f"JPEG frames q{self.jpeg_quality}, {size}, {rate}"
        keys = "all intra" if self.gop == 1 else f"keyframe every {self.gop}"
        return f"H.264 {keys}, crf {self.crf}{', fastdecode' if self.fast_decode else ''}, {size}, {rate}"


def output_name(video: str, settings: EncodeSettings) -> str:
    """The prepared copy's path relative to the output root: same folders, `.mp4` or a frame folder."""
    stem = PurePosixPath(video.replace("\\", "/").removeprefix("file://"))
    return str(stem.with_suffix(".mp4") if settings.output_format == "mp4" else stem.with_suffix(""))


def scaled_size(width: int, height: int, short_side_px: int) -> tuple[int, int]:
    """(width, height) with the short side at `short_side_px` and both even (H.264 4:2:0 needs even sizes)."""
    if not short_side_px:
        return width - width % 2, height - height % 2
    scale = short_side_px / min(width, height)
    even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def _source_frames(path: str, media: str, fps: float):
    """Yields (RGB-or-av frame, time in s) of a local video or frame folder, and the source rate."""
    import av

    if media == "frames":
        from . import decode, frame_folders

        count = frame_folders.count_frame_files(path)
        if count == 0:
            raise decode.DecodeError(path, "frame folder has no 00001.jpg", "missing")
        rate = fps or 30.0  # frame folders carry no rate: times only matter when resampling

        def folder():
            for i in range(count):
                yield av.VideoFrame.from_ndarray(frame_folders.read_frame_folder(path, [i])[0], format="rgb24"), i / rate

        return folder(), Fraction(rate).limit_denominator(1001)
    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise ValueError("file has no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    rate = stream.average_rate or stream.guessed_rate or Fraction(30)

    def video():
        try:
            for index, frame in enumerate(container.decode(stream)):
                seconds = float(frame.time) if frame.time is not None else index / float(rate)
                yield frame, seconds
        finally:
            container.close()

    return video(), Fraction(rate)


def _resampled(frames, fps: float):
    """Drops or repeats frames so that output frame i shows the source frame at time i / fps."""
    next_time, previous = 0.0, None
    for frame, seconds in frames:
        while previous is not None and next_time < seconds - 1e-6:
            yield previous
            next_time += 1.0 / fps
        previous = frame
        if seconds >= next_time - 1e-6:
            yield frame
            next_time += 1.0 / fps
    # the last frame is shown until its own display time ends; nothing more to emit


def _bt601(frame, width: int, height: int):
    """The frame resized to yuv420p in BT.601 limited range, what an untagged H.264 stream means to FFmpeg
    and to the YUV reader (`yuv.av_planes`). A BT.709 or full-range source is converted, not relabelled:
    its colours keep their meaning (relabelled, saturated ones moved by 20-30 levels; swscale's conversion
    truncates, about 1 level). The copy stays untagged: colour tags would put a `colr` box in the MP4,
    which sends its reads through FFmpeg's demuxer (`mp4.sample_table`)."""
    return frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA",
                          src_colorspace=frame.colorspace, dst_colorspace="ITU601",
                          src_color_range=frame.color_range, dst_color_range="MPEG")


def encode_video(src: str, dst: str, settings: EncodeSettings, *, media: str = "video") -> int:
    """Re-encodes one local video (or JPEG frame folder) into `dst`; returns the frames written.

    The output appears only when complete: an MP4 is written to `<dst>.part` and renamed, a frame
    folder is written to `<dst>.part/` and renamed.

    Raises:
        ValueError / av errors: the source cannot be decoded (the caller records it as a bad input).
    """
    import av

    frames, rate = _source_frames(src, media, settings.fps)
    if settings.fps:
        frames = _resampled(frames, settings.fps)
        rate = Fraction(settings.fps).limit_denominator(1001)
    else:
        frames = (frame for frame, _ in frames)
    tmp = f"{dst}.part"
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    count = 0
    if settings.output_format == "jpeg":
        from PIL import Image

        os.makedirs(tmp, exist_ok=True)
        for frame in frames:
            width, height = scaled_size(frame.width, frame.height, settings.short_side_px)
            rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
            count += 1
            Image.fromarray(rgb).save(os.path.join(tmp, f"{count:05d}.jpg"), quality=settings.jpeg_quality)
        if count == 0:
            raise ValueError("no frames could be decoded")
        if os.path.isdir(dst):  # a finished copy from an earlier run with other frames: replace it
            import shutil

            shutil.rmtree(dst)
        os.replace(tmp, dst)
        return count
    with av.open(tmp, mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = None
        for frame in frames:
            if stream is None:
                width, height = scaled_size(frame.width, frame.height, settings.short_side_px)
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = settings.x264_options()
                stream.codec_context.thread_count = 1  # one task = one core; parallelism comes from Ray
            out = _bt601(frame, stream.width, stream.height)
            out.pts, out.time_base = count, 1 / rate  # frame numbers: resampling already fixed the timing
            for packet in stream.encode(out):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError("no frames could be decoded")
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, dst)
    return count
