"""Clip-consistent spatial transforms on uint8 clips (one crop and one flip for all frames).

Train: multi-scale crop (TSN's `GroupMultiScaleCrop`: crop sides are fractions `scales` of the short
side after resizing it to `resize_px`, width and height at most one scale step apart), resized to
`size_px` x `size_px`, then an optional horizontal flip. Test: short side to `resize_px`, then one
centre crop or three crops along the long side (the "full-res 3-crop" protocol).

Everything stays uint8 (T, C, H, W); float conversion and normalisation happen on the device.
YUV 4:2:0 planes (`yuv.Planes`) take the same boxes and flips, on the planes, and come out packed
as I420 (T, 1, 3S/2, S); colour is converted per batch (`yuv.to_rgb`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from actionlab.data import profile, yuv

FlipPolicy = Literal["off", "on", "swap_pairs"]  # `data.flip`, declared here once
FLIP_POLICIES = get_args(FlipPolicy)

# Words whose meaning mirrors under a horizontal flip.
_MIRROR_WORDS = {
    "left": "right",
    "right": "left",
    "cw": "ccw",
    "ccw": "cw",
    "clockwise": "counterclockwise",
    "counterclockwise": "clockwise",
    "anticlockwise": "clockwise",
    "leftward": "rightward",
    "rightward": "leftward",
    "leftwards": "rightwards",
    "rightwards": "leftwards",
}


def _mirror_name(name: str) -> str:
    def swap(token: str) -> str:
        mirrored = _MIRROR_WORDS.get(token.lower())
        if mirrored is None:
            return token
        return mirrored.capitalize() if token[:1].isupper() else mirrored

    return "".join(swap(part) for part in re.split(r"([^A-Za-z]+)", name))


def flip_pairs_from_names(class_names: Sequence[str]) -> dict[int, int]:
    """Label map for horizontal flips: classes whose names differ only by left/right (or cw/ccw).

    `move_left` <-> `move_right`, `rotate_cw` <-> `rotate_ccw`, "Pushing something from left to
    right" <-> "Pushing something from right to left". Classes without a mirrored partner in the
    list are left out (they keep their label).

    Args:
        class_names: class names in label order.

    Returns:
        {label: mirrored label}, symmetric.
    """
    index = {name: i for i, name in enumerate(class_names)}
    pairs = {}
    for i, name in enumerate(class_names):
        j = index.get(_mirror_name(name))
        if j is not None and j != i:
            pairs[i], pairs[j] = j, i  # both ways, also when only one spelling mirrors (anticlockwise)
    return pairs


def to_tchw(clip: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 numpy or torch -> (T, 3, H, W) uint8 torch (a view where possible)."""
    tensor = torch.from_numpy(np.ascontiguousarray(clip)) if isinstance(clip, np.ndarray) else clip
    if tensor.ndim != 4 or tensor.shape[-1] != 3 or tensor.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 clip (T, H, W, 3), got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor.permute(0, 3, 1, 2)  # (T, C, H, W), channels-last memory: fast uint8 resize


def _resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, C, h, w) uint8 -> (T, C, height, width) uint8, bilinear with antialiasing."""
    if clip.shape[-2:] == (height, width):
        return clip
    return F.interpolate(clip, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def _short_side_shape(height: int, width: int, short_px: int) -> tuple[int, int]:
    scale = short_px / min(height, width)
    return max(short_px, round(height * scale)), max(short_px, round(width * scale))


def resize_short_side(clip: torch.Tensor, short_px: int) -> torch.Tensor:
    """(T, C, H, W) uint8 -> short side `short_px`, aspect ratio kept."""
    return _resize(clip, *_short_side_shape(clip.shape[-2], clip.shape[-1], short_px))


def multiscale_crop_box(
    height: int, width: int, *, size_px: int, scales: Sequence[float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A random multi-scale crop (TSN style) inside a `height` x `width` frame.

    Crop sides are `scale * min(height, width)` for each scale (snapped to `size_px` when within
    3 px); width and height use scales at most one step apart; the position is uniform.

    Returns:
        (top, left, crop_height, crop_width).
    """
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [size_px if abs(side - size_px) < 3 else max(side, 1) for side in sides]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
    crop_h, crop_w = pairs[int(rng.integers(len(pairs)))]
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return top, left, crop_h, crop_w


def train_box(
    height: int, width: int, *, size_px: int, resize_px: int, scales: Sequence[float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A training crop as (y0, x0, y1, x1) in the decoded frame: drawn on the frame resized to short
    side `resize_px`, then mapped back, so that the crop is resized once (crop-then-resize ==
    resize-then-crop up to sub-pixel rounding, at a fraction of the cost)."""
    resized_h, resized_w = _short_side_shape(height, width, resize_px)
    top, left, crop_h, crop_w = multiscale_crop_box(resized_h, resized_w, size_px=size_px, scales=scales, rng=rng)
    sy, sx = height / resized_h, width / resized_w
    y0, x0 = int(round(top * sy)), int(round(left * sx))
    y1, x1 = max(y0 + 1, int(round((top + crop_h) * sy))), max(x0 + 1, int(round((left + crop_w) * sx)))
    return y0, x0, y1, x1


def _draw_flip(label: int, flip: str, flip_pairs: dict[int, int] | None, rng: np.random.Generator) -> tuple[bool, int]:
    if flip != "off" and rng.random() < 0.5:
        if flip == "swap_pairs" and flip_pairs:
            label = flip_pairs.get(int(label), int(label))
        return True, int(label)
    return False, int(label)


def train_transform(
    clip: np.ndarray | torch.Tensor | yuv.Planes,
    label: int,
    *,
    size_px: int,
    resize_px: int,
    scales: Sequence[float],
    flip: str,
    flip_pairs: dict[int, int] | None,
    rng: np.random.Generator,
    defer_resize: bool = False,
) -> tuple[torch.Tensor | yuv.Crops, int]:
    """Multi-scale crop + resize + flip, the same for every frame.

    Args:
        clip: (T, H, W, 3) uint8 frames, or their YUV 4:2:0 planes.
        label: the clip's label (changed only by a `swap_pairs` flip).
        size_px: output side.
        resize_px: short side the crop scales refer to.
        scales: crop sides as fractions of the short side.
        flip: `off`, `on` (p = 0.5, label kept) or `swap_pairs` (p = 0.5, label mapped by `flip_pairs`).
        flip_pairs: {label: mirrored label} for `swap_pairs`.
        rng: the item's random generator.
        defer_resize: planes give `yuv.Crops` (the same box and flip; resized where the batch is
            normalised).

    Returns:
        ((T, C, size_px, size_px) uint8, label); planes give packed I420 (T, 1, 3 * size_px / 2, size_px).
    """
    if flip not in FLIP_POLICIES:
        raise ValueError(f"flip={flip!r} is not one of {list(FLIP_POLICIES)}")
    tick = profile.clock()
    if isinstance(clip, yuv.Planes):
        box = train_box(*clip.shape[1:], size_px=size_px, resize_px=resize_px, scales=scales, rng=rng)
        flipped, label = _draw_flip(label, flip, flip_pairs, rng)
        crop = yuv.Crops.crop if defer_resize else yuv.crop_resize
        out = crop(clip, box, size_px, flip=flipped)  # (T, 1, 3S/2, S), or its crop
        profile.lap("augment", tick)
        return out, label
    frames = to_tchw(clip)  # (T, C, H, W)
    y0, x0, y1, x1 = train_box(*frames.shape[-2:], size_px=size_px, resize_px=resize_px, scales=scales, rng=rng)
    out = _resize(frames[:, :, y0:y1, x0:x1], size_px, size_px)  # (T, C, size_px, size_px)
    flipped, label = _draw_flip(label, flip, flip_pairs, rng)
    if flipped:
        out = out.flip(-1)
    out = out.contiguous()
    profile.lap("augment", tick)
    return out, label


def _test_corners(height: int, width: int, size_px: int, num_crops: int) -> list[tuple[int, int]]:
    """(top, left) of the test crops in a frame of `height` x `width` (already resized)."""
    centre_top, centre_left = (height - size_px) // 2, (width - size_px) // 2
    if num_crops == 1:
        return [(centre_top, centre_left)]
    if width >= height:
        return [(centre_top, 0), (centre_top, centre_left), (centre_top, width - size_px)]
    return [(0, centre_left), (centre_top, centre_left), (height - size_px, centre_left)]


def test_transform(
    clip: np.ndarray | torch.Tensor | yuv.Planes, *, size_px: int, resize_px: int, num_crops: int
) -> torch.Tensor:
    """Short side to `resize_px`, then 1 centre crop or 3 crops (start, centre, end of the long side).

    Args:
        clip: (T, H, W, 3) uint8 frames, or their YUV 4:2:0 planes (each crop box is then mapped back
            to the decoded frame and resized once).
        size_px: crop side (at most `resize_px`).
        resize_px: short side before cropping.
        num_crops: 1 or 3.

    Returns:
        (num_crops, T, C, size_px, size_px) uint8; planes give (num_crops, T, 1, 3 * size_px / 2, size_px).
    """
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops={num_crops}: use 1 (centre) or 3 (along the long side)")
    if size_px > resize_px:
        raise ValueError(
            f"size_px={size_px} is larger than resize_px={resize_px}; test crops must fit the resized frame"
        )
    tick = profile.clock()
    if isinstance(clip, yuv.Planes):
        height, width = clip.shape[1:]
        resized_h, resized_w = _short_side_shape(height, width, resize_px)
        sy, sx = height / resized_h, width / resized_w
        views = []
        for top, left in _test_corners(resized_h, resized_w, size_px, num_crops):
            box = (round(top * sy), round(left * sx), round((top + size_px) * sy), round((left + size_px) * sx))
            views.append(yuv.crop_resize(clip, box, size_px))
        out = torch.stack(views)  # (num_crops, T, 1, 3S/2, S)
        profile.lap("augment", tick)
        return out
    frames = resize_short_side(to_tchw(clip), resize_px)  # (T, C, H, W), short side resize_px
    crops = [frames[:, :, top : top + size_px, left : left + size_px]
             for top, left in _test_corners(*frames.shape[-2:], size_px, num_crops)]
    out = torch.stack(crops).contiguous()  # (num_crops, T, C, size_px, size_px)
    profile.lap("augment", tick)
    return out
