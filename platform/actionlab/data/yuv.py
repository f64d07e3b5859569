"""YUV 4:2:0 clips: the decoder's planes are cropped and resized per clip, colour is converted per batch.

A decoded H.264 frame is YUV 4:2:0 (1.5 bytes a pixel). Converting whole frames to RGB on the CPU
(swscale) costs about as much as decoding them, and most of each frame is then cropped away. Here a
clip's crop box is taken on the planes (Y exactly, U/V on the chroma samples covering it), Y and U/V
are resized to the network's size, and the clip travels packed as I420, one uint8 (T, 1, 3S/2, S) tensor: the Y plane's S rows,
then U's and V's S/2 x S/2 samples, S/4 rows each. `to_rgb` converts a whole batch at once, on the
device the batch is on, inside `train.evaluate.normalise`, which tells I420 (C = 1) from RGB (C = 3).
With `data.resize_on=device` the resize moves there too: training clips travel as `Crops` (the crop
box's planes, at their decoded size) and are resized per clip on the GPU, in float.

Colours follow BT.601 limited range, what swscale (PyAV's `to_ndarray(format="rgb24")`) uses for
untagged and BT.601-tagged frames; other frames (BT.709 or full-range tags, other pixel formats) keep
the RGB path, clip by clip, so no colour changes meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F

from actionlab.data import batch_ring

# Where training clips cut from YUV planes are resized: per clip in the loader, or per batch where the
# batch is normalised (the GPU, when the Train worker has one).
ResizeOn = Literal["loader", "device"]
RESIZE_ON = get_args(ResizeOn)

# BT.601 limited range: RGB = 255/219 (Y - 16) + chroma terms (from Kr = 0.299, Kb = 0.114).
_Y_SCALE = 255.0 / 219.0
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_C = 255.0 / 224.0 * 2.0
# (R, G, B) rows x (U - 128, V - 128) columns.
_CHROMA = ((0.0, _C * (1 - _KR)), (-_C * _KB * (1 - _KB) / _KG, -_C * _KR * (1 - _KR) / _KG), (_C * (1 - _KB), 0.0))


@dataclass(frozen=True)
class Planes:
    """Decoded frames as YUV 4:2:0 planes (BT.601 limited range)."""

    y: np.ndarray  # (N, H, W) uint8
    u: np.ndarray  # (N, ceil(H / 2), ceil(W / 2)) uint8
    v: np.ndarray  # (N, ceil(H / 2), ceil(W / 2)) uint8

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.y.shape

    def clips(self, num_clips: int) -> list[Planes]:
        """Splits N = num_clips x T frames into clips of T."""
        t = self.y.shape[0] // num_clips
        return [Planes(self.y[i * t : (i + 1) * t], self.u[i * t : (i + 1) * t], self.v[i * t : (i + 1) * t])
                for i in range(num_clips)]


def av_planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(Y, U, V) views of a PyAV frame's planes, or None when it is not untagged/BT.601 limited-range yuv420p."""
    if frame.format.name != "yuv420p" or frame.colorspace not in (2, 5, 6) or frame.color_range == 2:
        return None  # 2 unspecified, 5 BT.470BG, 6 SMPTE 170M: BT.601; color_range 2 = full (JPEG) range
    out = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)  # padded rows
        out.append(rows[:, : plane.width])
    return tuple(out)


def _resize4(planes: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(N, h, w) uint8 planes (any strides) -> (N, height, width) uint8 tensor, antialiased bilinear.

    Four planes go through together as one channels-last 4-channel image: PyTorch's vectorised
    uint8 kernel takes that layout, about 7x faster than 1-channel images. numpy interleaves and
    de-interleaves them (3-4x faster than torch's permute-copies of uint8 measured here).
    """
    n, h, w = planes.shape
    if (h, w) == (height, width):
        return torch.from_numpy(np.ascontiguousarray(planes))
    groups = -(-n // 4)
    if groups * 4 != n:
        planes = np.concatenate([planes, np.repeat(planes[-1:], groups * 4 - n, axis=0)])
    packed = np.stack([planes[c::4] for c in range(4)], axis=-1)  # (G, h, w, 4): plane 4g + c in channel c
    out = F.interpolate(torch.from_numpy(packed).permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                        antialias=True, align_corners=False)  # (G, 4, height, width), channels-last memory
    planar = np.ascontiguousarray(out.numpy())  # (G, 4, height, width), planes contiguous
    return torch.from_numpy(planar).view(groups * 4, height, width)[:n]  # (N, height, width)


def _box(planes: Planes, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views (T, h, w), (T, ~h/2, ~w/2) x 2 of the box: Y exactly, U/V the chroma samples covering it
    (on odd edges, half a chroma sample more: at most one decoded pixel of chroma shift)."""
    y0, x0, y1, x1 = box
    rows, cols = slice(y0 // 2, -(-y1 // 2)), slice(x0 // 2, -(-x1 // 2))
    return planes.y[:, y0:y1, x0:x1], planes.u[:, rows, cols], planes.v[:, rows, cols]


def _crop(planes: Planes, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(Y (T, h, w) view, U then V (2T, ~h/2, ~w/2)) of the box (`_box`)."""
    luma, u, v = _box(planes, box)
    return luma, np.concatenate([u, v])


def _pack(luma: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Y (T, S, S) and U then V (2T, S/2, S/2) -> packed I420 (T, 1, 3S/2, S)."""
    t, size = luma.shape[0], luma.shape[-1]
    half = size // 2
    uv = chroma.reshape(2, t, half * half).transpose(0, 1).reshape(t, half, size)  # (T, S/2, S): U rows, V rows
    return torch.cat([luma, uv], dim=1).unsqueeze(1)


def crop_resize(planes: Planes, box: tuple[int, int, int, int], size_px: int, *, flip: bool = False) -> torch.Tensor:
    """One crop of every frame, resized to size_px x size_px and packed as I420.

    Args:
        planes: the clip's T frames.
        box: (y0, x0, y1, x1) in the decoded frame. Y is cropped exactly; U/V take the chroma
            samples that cover the box (on odd edges, half a chroma sample more: at most one decoded
            pixel of chroma shift).
        size_px: output side (even).
        flip: mirror horizontally.

    Returns:
        (T, 1, 3 * size_px // 2, size_px) uint8.
    """
    _check_even(size_px)
    luma, chroma = _crop(planes, box)
    half = size_px // 2
    luma = _resize4(luma, size_px, size_px)  # (T, S, S)
    chroma = _resize4(chroma, half, half)  # (2T, S/2, S/2)
    if flip:
        luma, chroma = luma.flip(-1), chroma.flip(-1)
    return _pack(luma, chroma)  # (T, 1, 3S/2, S)


def _check_even(size_px: int) -> None:
    if size_px % 2:
        raise ValueError(f"size_px={size_px}: YUV 4:2:0 clips need an even crop side; use an even clip.size_px "
                         "or data.pixels=rgb")


# A crop larger than this many times the output is resized in the loader all the same (`Crops.crop`):
# raw high-resolution videos would otherwise ship up to 20x the bytes of a resized clip.
MAX_DEFERRED_AREA = 2.0


@dataclass(eq=False)
class Crops:
    """Clips cropped on the planes and not yet resized: the resize (and flip) runs where the batch is
    normalised, on the GPU when the Train worker has one (`data.resize_on=device`).

    Every clip's Y and U/V crops lie in one flat uint8 buffer, so a batch is pinned and copied to the
    device in one piece. `packed()` resizes each clip (antialiased bilinear, in float: no rounding
    to uint8 before the colour conversion) and returns the batch as packed I420 like `crop_resize`'s.
    A batch a loader worker wrote into a `batch_ring` segment carries its `lease`, and its `data` belongs
    to the ring: send the `Crops` on to another process (it goes as a copy), not its bare `data`.
    """

    data: torch.Tensor  # (sum of the crops' sizes,) uint8
    shapes: list  # per clip: (T, h, w, ch, cw) of its Y and of each of its U and V crops
    flips: list  # per clip: mirror it horizontally
    size_px: int
    lease: batch_ring.Lease | None = None

    def __reduce__(self):
        """A batch a loader worker wrote into its ring travels with its lease to the process it reaches
        (`batch_ring.arrived`); sent on from there, it goes as a copy (`Lease.sent_on`)."""
        data, lease = self.data, self.lease
        if lease is not None and lease.sent_on():
            data, lease = data.clone(), None
        return _arrived, (data, self.shapes, self.flips, self.size_px, lease)

    def __len__(self) -> int:
        return len(self.shapes)

    @staticmethod
    def crop(planes: Planes, box: tuple[int, int, int, int], size_px: int, *, flip: bool = False) -> Crops:
        """One clip's crop (`crop_resize`'s box and flip), its resize left to `packed()`; a box of more
        than `MAX_DEFERRED_AREA` times the output's area is resized here (its flip still deferred)."""
        _check_even(size_px)
        y0, x0, y1, x1 = box
        if (y1 - y0) * (x1 - x0) > MAX_DEFERRED_AREA * size_px * size_px:
            luma, chroma = _crop(planes, box)
            luma, chroma = _resize4(luma, size_px, size_px).numpy(), _resize4(chroma, size_px // 2, size_px // 2).numpy()
            u, v = np.split(chroma, 2)
        else:
            luma, u, v = _box(planes, box)
        (t, h, w), (ch, cw) = luma.shape, u.shape[1:]
        flat = np.empty(t * h * w + 2 * t * ch * cw, np.uint8)  # one copy of the crops, straight from the planes
        flat[: t * h * w].reshape(t, h, w)[...] = luma
        chroma = flat[t * h * w :].reshape(2, t, ch, cw)  # U then V: (2T, ch, cw)
        chroma[0], chroma[1] = u, v
        return Crops(torch.from_numpy(flat), [(t, h, w, ch, cw)], [bool(flip)], size_px)

    @staticmethod
    def cat(items: list[Crops], ring: batch_ring.BatchRing | None = None) -> Crops:
        """One batch of the items' crops; in a loader worker, written into a segment of `ring` when one is free."""
        total = sum(c.data.numel() for c in items)
        placed = ring.buffer(total) if ring is not None else None
        data, lease = placed or (torch.empty(total, dtype=torch.uint8), None)
        try:
            torch.cat([c.data for c in items], out=data)
        except BaseException:
            if lease is not None:
                ring.give_back(lease)
            raise
        return Crops(data, [s for c in items for s in c.shapes], [f for c in items for f in c.flips], items[0].size_px,
                     lease)

    def pin_memory(self) -> Crops:
        """Page-locked copy (what the DataLoader's pinning thread calls)."""
        return Crops(self.data.pin_memory(), self.shapes, self.flips, self.size_px)

    def to(self, device, non_blocking: bool = False) -> Crops:
        return Crops(self.data.to(device, non_blocking=non_blocking), self.shapes, self.flips, self.size_px)

    def packed(self) -> torch.Tensor:
        """(B, T, 1, 3S/2, S) float packed I420 in [0, 255], on the buffer's device.

        Clips whose crops have one shape are resized in one call (multi-scale crops come in a few
        shapes), so a batch costs a few dozen kernels on the GPU, not several per clip. Nothing here
        waits for the GPU: the batch order and the flips reach it as small tensors copied without
        blocking, and the results are placed with `index_copy_` and `where`, never a list index."""
        size, half = self.size_px, self.size_px // 2
        device = self.data.device
        views, start = [], 0
        for t, h, w, ch, cw in self.shapes:
            luma = self.data[start : start + t * h * w].view(t, h, w)
            start += t * h * w
            views.append((luma, self.data[start : start + 2 * t * ch * cw].view(2 * t, ch, cw)))
            start += 2 * t * ch * cw
        b, t = len(views), self.shapes[0][0]
        planes = []
        for plane, side in ((0, size), (1, half)):
            groups: dict[tuple, list[int]] = {}
            for i, clip in enumerate(views):
                groups.setdefault(tuple(clip[plane].shape), []).append(i)
            resized, order = [], []
            for (frames, h, w), index in groups.items():
                x = torch.stack([views[i][plane] for i in index]).float()  # (n, frames, h, w)
                if (h, w) != (side, side):
                    x = F.interpolate(x.view(-1, 1, h, w), size=(side, side), mode="bilinear", antialias=True,
                                      align_corners=False).view(len(index), frames, side, side)
                resized.append(x)
                order += index
            x = torch.cat(resized)  # clips in group order
            where = torch.tensor(order).to(device, non_blocking=True)
            planes.append(torch.empty_like(x).index_copy_(0, where, x))  # (B, T, S, S), (B, 2T, S/2, S/2)
        luma, chroma = planes
        if any(self.flips):
            flip = torch.tensor(self.flips).to(device, non_blocking=True).view(b, 1, 1, 1)
            luma, chroma = torch.where(flip, luma.flip(-1), luma), torch.where(flip, chroma.flip(-1), chroma)
        uv = chroma.view(b, 2, t, half * half).transpose(1, 2).reshape(b, t, half, size)  # (B, T, S/2, S)
        return torch.cat([luma, uv], dim=2).unsqueeze(2)


def _arrived(data: torch.Tensor, shapes: list, flips: list, size_px: int, lease: batch_ring.Lease | None) -> Crops:
    """Unpickles a `Crops`; one from a loader worker's ring is watched by the process it reaches."""
    if lease is not None:
        batch_ring.arrived(lease, data)
    return Crops(data, shapes, flips, size_px, lease)


def is_i420(clips: torch.Tensor | Crops) -> bool:
    """True for packed I420 clips (..., 1, 3S/2, S) and for `Crops`; RGB clips have 3 channels."""
    return isinstance(clips, Crops) or (clips.ndim >= 3 and clips.shape[-3] == 1)


def to_rgb(clips: torch.Tensor | Crops) -> torch.Tensor:
    """Packed I420 (..., 1, 3S/2, S) uint8 (or float, or `Crops` resized first) -> RGB (..., 3, S, S) float in [0, 255], on the clips' device.

    Chroma terms are computed at chroma resolution (one small matmul) and repeated 2x2, as swscale's
    unscaled converter repeats chroma samples; then luma is added to all three channels.
    """
    if isinstance(clips, Crops):
        clips = clips.packed()  # (B, T, 1, 3S/2, S) float
    size = clips.shape[-1]
    half = size // 2
    lead = clips.shape[:-3]
    uv = clips[..., 0, size:, :].reshape(*lead, 2, half * half).float()  # (..., 2, S/2 * S/2)
    weights = torch.tensor(_CHROMA, dtype=uv.dtype, device=uv.device)  # (3, 2)
    offset = (-16.0 * _Y_SCALE - 128.0 * weights.sum(1)).view(3, 1)  # the -16 and -128 biases, folded
    chroma = torch.matmul(weights, uv).add_(offset).view(-1, 3, half, half)  # (N, 3, S/2, S/2)
    rgb = F.interpolate(chroma, scale_factor=2, mode="nearest").view(*lead, 3, size, size)  # (..., 3, S, S)
    luma = clips[..., 0, :size, :]  # (..., S, S)
    luma = luma.float().mul_(_Y_SCALE) if luma.dtype == torch.uint8 else luma * _Y_SCALE  # a float input is kept
    return rgb.add_(luma.unsqueeze(-3)).clamp_(0.0, 255.0)


def to_rgb_uint8(clips: torch.Tensor) -> torch.Tensor:
    """Packed I420 -> uint8 RGB (..., 3, S, S), for batches that mix I420 and RGB items."""
    return to_rgb(clips).round_().to(torch.uint8)
