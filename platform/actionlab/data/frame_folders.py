"""Reading sampled frames from JPEG frame folders (`{:05d}.jpg`, as TSN/TSM extract them).

Every failure raises `decode.DecodeError(path, reason)`, as the video readers do, so callers catch one type.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from actionlab.data import profile
from actionlab.data.decode import DecodeError, first_line

# JPEG frame decoders: PIL; PIL with DCT-domain downscaling when frames are stored larger than needed
# (libjpeg's scaled IDCT, `Image.draft`); torchvision's libjpeg-turbo binding (`decode_jpeg`; deprecated
# since torchvision 0.29 in favour of torchcodec's image decoders, which are not installed here).
JpegDecoder = Literal["pil", "pil_draft", "torchvision"]
JPEG_DECODERS = get_args(JpegDecoder)


def frame_file(folder: str | os.PathLike, index: int, *, template: str = "{:05d}.jpg", start: int = 1) -> str:
    """The file holding 0-based frame `index` of a frame folder (file numbers begin at `start`)."""
    return os.path.join(os.fspath(folder), template.format(int(index) + start))


def count_frame_files(folder: str | os.PathLike, *, template: str = "{:05d}.jpg", start: int = 1) -> int:
    """Consecutive frame files present from the first one on (0 when the first is missing)."""
    count = 0
    # Probe by name instead of listing: folders may hold other files (flow, thumbnails).
    while os.path.exists(frame_file(folder, count, template=template, start=start)):
        count += 1
    return count


def _draft_size(width: int, height: int, short_px: int) -> tuple[int, int]:
    """The smallest size with short side >= `short_px` at the frame's aspect ratio (PIL's draft request)."""
    scale = short_px / min(width, height)
    return math.ceil(round(width * scale, 6)), math.ceil(round(height * scale, 6))


def _read_jpeg(name: str, jpeg: str, short_px: int) -> np.ndarray:
    """One image as (H, W, 3) uint8 RGB, with the profile's open / decode / convert stages."""
    tick = profile.clock()
    if jpeg == "torchvision":
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        data = read_file(name)
        tick = profile.lap("open", tick)
        image = decode_jpeg(data, mode=ImageReadMode.RGB)  # (3, H, W)
        tick = profile.lap("decode", tick)
        out = image.permute(1, 2, 0).numpy()  # (H, W, 3) view
        profile.lap("convert", tick)
        return out
    from PIL import Image

    with Image.open(name) as image:
        if jpeg == "pil_draft" and short_px and image.format == "JPEG":
            # libjpeg scales by 1/2, 1/4 or 1/8 inside the IDCT when that still leaves short_px.
            image.draft("RGB", _draft_size(*image.size, short_px))
        tick = profile.lap("open", tick)
        image.load()
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        tick = profile.lap("decode", tick)
        out = np.asarray(rgb)  # (H, W, 3)
    profile.lap("convert", tick)
    return out


def read_image_files(
    paths: Sequence[str], *, source: str | os.PathLike | None = None, jpeg: str = "pil", short_px: int = 0
) -> np.ndarray:
    """Reads image files (JPEG frames); repeated paths are read once.

    Args:
        paths: local image files, one per output frame.
        source: what errors name (e.g. the frame folder); each file's own path when omitted.
        jpeg: `pil`, `pil_draft` or `torchvision` (see `JPEG_DECODERS`).
        short_px: for `pil_draft`, the short side the frames will be resized to: JPEGs stored at
            2x, 4x or 8x that are decoded at a reduced scale (the clip's transform resizes anyway).

    Returns:
        (N, H, W, 3) uint8 RGB frames in the order of `paths`.

    Raises:
        DecodeError: missing, empty or unreadable image, or images of different sizes.
    """
    from PIL import UnidentifiedImageError

    if jpeg not in JPEG_DECODERS:
        raise ValueError(f"jpeg decoder {jpeg!r} is not one of {list(JPEG_DECODERS)} (data.jpeg_decoder)")
    if not paths:
        raise DecodeError(source or "<no files>", "no frames were requested")
    cache: dict[str, np.ndarray] = {}
    for name in paths:
        if name in cache:
            continue
        where = os.fspath(source) if source is not None else name
        if not os.path.exists(name):
            reason = f"frame {Path(name).name} is missing; fix num_frames or re-extract the frames"
            raise DecodeError(where, reason, "short")
        if os.path.getsize(name) == 0:
            raise DecodeError(where, f"frame {Path(name).name} is empty (0 bytes); re-extract the frames", "empty")
        try:
            cache[name] = _read_jpeg(name, jpeg, short_px)
        except (UnidentifiedImageError, OSError, SyntaxError, RuntimeError) as err:
            # torchvision raises RuntimeError for data that is not a JPEG
            raise DecodeError(where, f"frame {Path(name).name} is not a readable image ({first_line(err)})") from None
    shapes = sorted({frame.shape for frame in cache.values()})
    if len(shapes) > 1:
        raise DecodeError(source or paths[0], f"frames differ in size {shapes}; re-extract the frames")
    return np.stack([cache[name] for name in paths])  # (N, H, W, 3)


def read_frame_folder(
    folder: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    template: str = "{:05d}.jpg",
    start: int = 1,
    *,
    jpeg: str = "pil",
    short_px: int = 0,
) -> np.ndarray:
    """Reads frames of a JPEG frame folder.

    Args:
        folder: local folder of frames.
        indices: 0-based frame indices; index i is the file `template.format(i + start)`.
        template: file-name template.
        start: number of the first file (1 for IBM/TSN/mmaction2 folders).
        jpeg, short_px: see `read_image_files`.

    Returns:
        (N, H, W, 3) uint8 RGB frames in the order of `indices`.

    Raises:
        DecodeError: missing folder or frame, unreadable JPEG, or frames of different sizes.
    """
    text = os.fspath(folder)
    if not os.path.isdir(text):
        raise DecodeError(text, "frame folder does not exist; fix the manifest path or the data root", "missing")
    names = [frame_file(text, i, template=template, start=start) for i in np.asarray(indices).reshape(-1).tolist()]
    return read_image_files(names, source=text, jpeg=jpeg, short_px=short_px)
