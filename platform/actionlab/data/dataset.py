"""The clip dataset: manifest rows -> sampled, decoded, transformed uint8 clips in a model's
`InputFormat`, built by `build_dataset` (its loaders: `data.loader`).

A bad sample never raises: paths escaping the root, labels out of range and undecodable files
become error items `{"error": reason, "kind": kind, "video_id": video}` that `collate_clips`
drops and reports, so the training loop can count them against `max_bad_fraction`.

Randomness is a function of (seed, epoch, index) only: resuming at an epoch reproduces the same
clips, and DataLoader workers never repeat each other's draws. The epoch lives in shared memory, so
persistent loader workers see each `set_epoch`.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from actionlab import storage
from actionlab.data import decode, frame_folders, profile, sampling, transforms, yuv
from actionlab.data.batch_ring import BatchRing
from workloads.registry import InputFormat


class BadSample(Exception):
    """A manifest row that cannot become a clip (outside the root, bad label, unreadable media)."""

    def __init__(self, video_id: str, reason: str, kind: str):
        self.video_id = video_id
        self.reason = reason
        self.kind = kind  # outside_root | label | missing | empty | corrupt | short
        super().__init__(f"{video_id}: {reason}")


def resolve_media(root: str, video: str) -> str:
    """The local path or URI of a manifest row's media, refusing anything outside `root`.

    Local roots resolve symlinks, so a link inside the root that points elsewhere is refused too.

    Args:
        root: dataset root (local folder, `file://` or `s3://...`).
        video: the row's `video` value (relative path, or an absolute path / URI under the root).

    Raises:
        BadSample: (kind `outside_root`) the path escapes the root.
    """
    if storage.is_remote(root):
        base = root.rstrip("/")
        if "://" in video:
            if not video.startswith(base + "/"):
                reason = f"URI is not under the data root {root}; set data.root or fix the manifest"
                raise BadSample(video, reason, "outside_root")
            video = video[len(base) + 1 :]
        relative = posixpath.normpath(video)
        if relative.startswith("/") or relative == ".." or relative.startswith("../"):
            reason = f"path escapes the data root {root}; manifest paths must stay inside it"
            raise BadSample(video, reason, "outside_root")
        return storage.join(base, relative)
    if storage.is_remote(video):
        reason = f"remote URI under a local data root {root}; set data.root to its bucket prefix"
        raise BadSample(video, reason, "outside_root")
    root_path = Path(root.removeprefix("file://")).resolve()
    resolved = (root_path / video.removeprefix("file://")).resolve()  # follows symlinks
    if not resolved.is_relative_to(root_path):
        raise BadSample(
            video,
            f"path escapes the data root {root_path} (resolves to {resolved}); keep the data inside the root "
            "(no '..', absolute paths or symlinks pointing out)",
            "outside_root",
        )
    return str(resolved)


def fetch_local(uri: str, cache_dir: str | None) -> str:
    """A local path for media at `uri` (remote files through the read-through cache).

    Raises:
        decode.DecodeError: (kind `missing`) the remote file is absent or the download failed.
        storage.CacheFullError: the cache's disk is full.
        storage.RetriesExhausted: the store stayed unreachable through every retry.
        Neither is a bad sample (the file may be fine and every later one would fail too): they stop
        the worker, Ray Train restarts it from the last checkpoint, and the message says what to fix.
    """
    if not storage.is_remote(uri):
        return uri
    try:
        return storage.local_copy(uri, cache_dir)
    except (storage.CacheFullError, storage.RetriesExhausted):
        raise
    except FileNotFoundError:
        reason = "file does not exist in remote storage; fix the manifest path or the data root"
        raise decode.DecodeError(uri, reason, "missing") from None
    except OSError as err:
        raise decode.DecodeError(uri, f"download failed ({err})", "missing") from None


def _optional_int(row: dict, key: str) -> int | None:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def frame_range(row: dict, available: int | None) -> tuple[int, int]:
    """(first frame, number of usable frames) of a row, checked against the media's frame count.

    Args:
        row: manifest row (`start`/`end` 0-based inclusive, or `num_frames`).
        available: frames the media really has (None when unknown).

    Raises:
        decode.DecodeError: (kind `short`) the manifest asks for frames the media does not have.
    """
    start, end, count = _optional_int(row, "start"), _optional_int(row, "end"), _optional_int(row, "num_frames")
    video = str(row["video"])
    if start is not None and end is not None:
        if end < start or start < 0:
            raise decode.DecodeError(video, f"frame range start={start} end={end} is empty; fix the manifest", "short")
        if available is not None and end >= available:
            raise decode.DecodeError(
                video,
                f"manifest range ends at frame {end} but the media has {available} frames; fix start/end",
                "short",
            )
        return start, end - start + 1
    if available is not None:
        return 0, available  # the decoder's count is the truth for videos
    if count is None or count < 1:
        raise decode.DecodeError(video, "frame count unknown; add num_frames (or start/end) to the manifest", "short")
    return 0, count


class VideoClipDataset(Dataset):
    """Clips from manifest rows in a model's `InputFormat`, for training (random views) or testing
    (fixed multi-view). Build it with `build_dataset`.

    Items: train `{"clip": uint8 (T, C, H, W), "label": int, "video_id": str}`; test the same with
    `clip` uint8 (V, T, C, H, W), V = num_clips * num_crops, clip-major and crop-minor (with
    `pixels="yuv420"`, clips decoded as planes are packed I420: C = 1, H = 3 * size_px / 2); a bad row
    gives `{"error": str, "kind": str, "video_id": str}`. T = `fmt.clip_frames`.
    """

    def __init__(
        self,
        *,
        df: pd.DataFrame,
        fmt: InputFormat,
        root: str | os.PathLike,
        num_classes: int,
        train: bool,
        scales: Sequence[float] = (1.0,),
        flip: str = "off",
        flip_pairs: dict[int, int] | None = None,
        num_clips: int = 1,
        num_crops: int = 1,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        frame_template: str = "{:05d}.jpg",
        decoder: str = "",
        pixels: str = "rgb",
        jpeg_decoder: str = "pil",
        resize_on: str = "loader",
    ):
        """Builds the dataset; nothing is read until an item is asked for.

        Args:
            df: manifest rows (`video`, `label`, optional `start`/`end`/`num_frames`/`media`).
            fmt: what the model eats: sampling, frames, stride, crop and resize (`spec.input_for`, or a
                saved model's `meta.preprocessing`).
            root: dataset root the `video` paths are relative to (local or `s3://`).
            num_classes: labels must lie in [0, num_classes).
            train: random sampling and augmentation, else deterministic multi-view testing.
            scales: multi-scale crop fractions (training).
            flip: `off`, `on` or `swap_pairs` (training).
            flip_pairs: {label: mirrored label} for `swap_pairs`.
            num_clips: test clips per video.
            num_crops: test crops per clip (1 or 3).
            seed: base seed of the per-item random generators.
            cache_dir: local read-through cache; required for remote roots.
            frame_template: file names in frame folders (1-based numbering).
            decoder: `decord`, `pyav`, or '' for the default (`ACTIONLAB_DECODER` overrides it).
            pixels: `rgb`, or `yuv420`: videos PyAV can hand over as YUV 4:2:0 planes are cropped and
                resized on the planes and converted to RGB per batch (`train.evaluate.normalise`).
            jpeg_decoder: how frame folders are decoded (`frame_folders.JPEG_DECODERS`).
            resize_on: `loader`, or `device`: training clips cut from YUV planes come as `yuv.Crops`,
                resized where the batch is normalised (`data.resize_on`).
        """
        missing = [c for c in ("video", "label") if c not in df.columns]
        if missing:
            raise ValueError(f"manifest rows lack columns {missing}; read them with manifest.read_manifest")
        if not isinstance(fmt, InputFormat):
            raise TypeError(f"fmt must be a workloads.InputFormat (spec.input_for(params)), got {fmt!r}")
        if pixels not in decode.PIXELS:
            raise ValueError(f"pixels={pixels!r} is not one of {list(decode.PIXELS)} (data.pixels)")
        if pixels == "yuv420" and fmt.size_px % 2:
            raise ValueError(f"size_px={fmt.size_px} with pixels=yuv420: 4:2:0 crops need an even side; use an "
                             "even clip.size_px or data.pixels=rgb")
        if resize_on not in yuv.RESIZE_ON:
            raise ValueError(f"resize_on={resize_on!r} is not one of {list(yuv.RESIZE_ON)} (data.resize_on)")
        if jpeg_decoder not in frame_folders.JPEG_DECODERS:
            raise ValueError(f"jpeg_decoder={jpeg_decoder!r} is not one of {list(frame_folders.JPEG_DECODERS)}")
        if flip not in transforms.FLIP_POLICIES:
            raise ValueError(f"flip={flip!r} is not one of {list(transforms.FLIP_POLICIES)}")
        if num_classes < 1 or num_clips < 1 or num_crops not in (1, 3):
            raise ValueError(
                f"need num_classes, num_clips >= 1 and num_crops in (1, 3); got {num_classes}, {num_clips}, "
                f"{num_crops}"
            )
        if not train and fmt.size_px > fmt.resize_px:
            raise ValueError(f"size_px={fmt.size_px} > resize_px={fmt.resize_px}: test crops must fit the resized "
                             "frame")
        self.root = os.fspath(root)
        if storage.is_remote(self.root) and cache_dir is None:
            raise ValueError(f"data root {self.root} is remote: pass cache_dir (a local folder for downloaded videos)")
        keep = [c for c in ("video", "label", "start", "end", "num_frames", "media") if c in df.columns]
        self._rows = df[keep].to_dict("records")
        self.fmt = fmt
        self.num_classes = num_classes
        self.train = train
        self.scales = tuple(scales)
        self.flip = flip
        self.flip_pairs = dict(flip_pairs or {})
        self.num_clips = num_clips
        self.num_crops = num_crops
        self.seed = seed
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.frame_template = frame_template
        self.decoder = decoder
        self.pixels = pixels
        self.jpeg_decoder = jpeg_decoder
        self.resize_on = resize_on
        # Shared memory: persistent DataLoader workers hold a copy of the dataset made when they
        # started, and read the epoch of their draws from here.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Selects the random draws of an epoch (call before creating the epoch's iterator)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self._rows)

    def _indices(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """(clips * T,) indices in [0, length): one clip (training) or num_clips clips back to back (testing)."""
        fmt, clips = self.fmt, 1 if self.train else self.num_clips
        picks = []
        for clip_index in range(clips):
            where = dict(train=self.train, rng=rng, clip_index=clip_index, num_clips=clips)
            if fmt.sampling == "segments":
                picks.append(sampling.segment_indices(length, fmt.num_frames, **where))
            elif fmt.sampling == "snippets":
                picks.append(sampling.snippet_indices(length, fmt.num_frames, fmt.snippet_frames, **where))
            else:
                picks.append(sampling.dense_indices(length, fmt.num_frames, fmt.stride, **where))
        return np.concatenate(picks)  # (clips * T,)

    def _read(self, row: dict, rng: np.random.Generator) -> np.ndarray | yuv.Planes:
        """(clips * T, H, W, 3) uint8 frames of a row, or their planes."""
        uri = resolve_media(self.root, str(row["video"]))
        if row.get("media", "video") == "frames":
            remote = storage.is_remote(uri)
            available = None  # frame folders: trust num_frames or start/end, probe files only without them
            if not remote and _optional_int(row, "num_frames") is None and _optional_int(row, "end") is None:
                available = frame_folders.count_frame_files(uri, template=self.frame_template)
                if available == 0:
                    raise decode.DecodeError(uri, f"frame folder has no {self.frame_template.format(1)}", "missing")
            first, length = frame_range(row, available)
            indices = self._indices(length, rng) + first
            jpeg = dict(jpeg=self.jpeg_decoder, short_px=self.fmt.resize_px)
            if not remote:
                return frame_folders.read_frame_folder(uri, indices, template=self.frame_template, **jpeg)
            # Remote frame folders: fetch just the sampled JPEGs into the cache, then read them there.
            names = [storage.join(uri, self.frame_template.format(i + 1)) for i in indices.tolist()]
            local = {name: fetch_local(name, self.cache_dir) for name in set(names)}
            return frame_folders.read_image_files([local[name] for name in names], source=uri, **jpeg)  # (N, H, W, 3)

        def choose(available: int) -> np.ndarray:
            first, length = frame_range(row, available)
            return self._indices(length, rng) + first

        frames, _ = decode.read_sampled(fetch_local(uri, self.cache_dir), choose, decoder=self.decoder,
                                        pixels=self.pixels)
        return frames

    def __getitem__(self, index: int) -> dict:
        row = self._rows[index]
        video_id = str(row["video"])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        try:
            label = int(row["label"])
            if not 0 <= label < self.num_classes:
                reason = f"label {label} is outside [0, {self.num_classes}); fix the manifest or the class list"
                raise BadSample(video_id, reason, "label")
            frames = self._read(row, rng)  # (clips * T, H, W, 3)
        except BadSample as err:
            return {"error": str(err), "kind": err.kind, "video_id": video_id}
        except decode.DecodeError as err:
            return {"error": str(err), "kind": err.kind, "video_id": video_id}
        if self.train:
            clip, label = transforms.train_transform(
                frames,
                label,
                size_px=self.fmt.size_px,
                resize_px=self.fmt.resize_px,
                scales=self.scales,
                flip=self.flip,
                flip_pairs=self.flip_pairs,
                rng=rng,
                defer_resize=self.resize_on == "device",
            )
            return {"clip": clip, "label": label, "video_id": video_id}  # clip (T, C, H, W), or yuv.Crops
        if isinstance(frames, yuv.Planes):
            per_clip = frames.clips(self.num_clips)
        else:
            per_clip = frames.reshape(self.num_clips, self.fmt.clip_frames, *frames.shape[1:])  # (clips, T, H, W, 3)
        views = torch.stack(
            [
                transforms.test_transform(c, size_px=self.fmt.size_px, resize_px=self.fmt.resize_px,
                                          num_crops=self.num_crops)
                for c in per_clip
            ]
        )  # (clips, crops, T, C, H, W)
        views = views.flatten(0, 1)  # (V, T, C, H, W): clip-major, crop-minor
        return {"clip": views, "label": label, "video_id": video_id}


def build_dataset(
    rows: pd.DataFrame,
    fmt: InputFormat,
    *,
    train: bool,
    root: str | os.PathLike,
    classes: Sequence[str],
    decoder: str = "auto",
    flip: str = "off",
    scales: Sequence[float] = (1.0,),
    num_clips: int = 1,
    num_crops: int = 1,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    pixels: str = "rgb",
    jpeg_decoder: str = "pil",
    resize_on: str = "loader",
) -> VideoClipDataset:
    """Manifest rows as clips in a model's input format: how the Train worker, `actionlab eval`,
    `predict`, the pyfunc model, serving and the benchmarks all build their datasets.

    Args:
        rows: manifest rows as `manifest.read_manifest` returns them (a split selected or not); the
            manifest's metadata travels with them and names the decoder `auto` picks.
        fmt: what the model eats (`spec.input_for(params, ...)`, or a saved model's `meta.preprocessing`).
        train: a random clip per video with augmentation (`scales`, `flip`), else `num_clips` x
            `num_crops` fixed views.
        root: dataset root the rows' paths are relative to (local or `s3://`).
        classes: the class names the labels index; `swap_pairs` mirrors the ones whose names say
            left / right (`transforms.flip_pairs_from_names`).
        decoder: `auto` (what the manifest's writer measured fastest, else the default), `decord` or `pyav`.
        flip: `off`, `on` or `swap_pairs` (training).
        scales: multi-scale crop fractions of the short side (training).
        num_clips: test clips per video.
        num_crops: test crops per clip (1 or 3).
        seed: base seed of the per-item random generators.
        cache_dir: local read-through cache; required for remote roots.
        pixels: `rgb` or `yuv420` (`data.pixels`, resolved).
        jpeg_decoder: how frame folders are decoded (`frame_folders.JPEG_DECODERS`).
    """
    from actionlab.data.manifest import preferred_decoder  # pyarrow: not needed in loader workers

    if decoder == "auto":
        decoder = preferred_decoder(rows)
    flip_pairs = transforms.flip_pairs_from_names(classes) if flip == "swap_pairs" else {}
    return VideoClipDataset(
        df=rows, fmt=fmt, root=root, num_classes=len(classes), train=train, scales=scales, flip=flip,
        flip_pairs=flip_pairs, num_clips=num_clips, num_crops=num_crops, seed=seed, cache_dir=cache_dir,
        decoder=decoder, pixels=pixels, jpeg_decoder=jpeg_decoder, resize_on=resize_on,
    )


def stack_clips(clips: list[torch.Tensor | yuv.Crops], ring: BatchRing | None = None) -> torch.Tensor | yuv.Crops:
    """Stacks items' clips; when packed I420 and RGB items meet (a frame folder or a BT.709 video in a
    `yuv420` run), the I420 ones are converted to uint8 RGB first, on the CPU. `yuv.Crops` items make
    one `yuv.Crops` (in a segment of `ring` when it has one free); among other items they are resized
    here, on the CPU."""
    crops = [clip for clip in clips if isinstance(clip, yuv.Crops)]
    if crops and len(crops) == len(clips):
        return yuv.Crops.cat(crops, ring)
    if crops:
        clips = [c.packed()[0].round_().to(torch.uint8) if isinstance(c, yuv.Crops) else c for c in clips]
    if len({clip.shape for clip in clips}) > 1:
        clips = [yuv.to_rgb_uint8(c).contiguous() if yuv.is_i420(c) else c for c in clips]
    return torch.stack(clips)  # (B, T, C, H, W) or (B, V, T, C, H, W)


def collate_clips(items: list[dict], ring: BatchRing | None = None) -> dict:
    """Stacks good items and lists the bad ones (`ring`: see `stack_clips`).

    Returns:
        `clip` (B, ...) uint8, `label` (B,) int64, `video_id` list of B, `bad` list of
        (video_id, reason). When every item is bad, `clip` and `label` are empty (0,) tensors.
    """
    tick = profile.clock()
    good = [item for item in items if "error" not in item]
    bad = [(item["video_id"], item["error"]) for item in items if "error" in item]
    if not good:
        empty_clip, empty_label = torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        return {"clip": empty_clip, "label": empty_label, "video_id": [], "bad": bad}
    labels = torch.tensor([item["label"] for item in good], dtype=torch.int64)
    batch = {
        "clip": stack_clips([item["clip"] for item in good], ring),  # (B, T, C, H, W) or (B, V, T, C, H, W)
        "label": labels,
        "video_id": [item["video_id"] for item in good],
        "bad": bad,
    }
    profile.lap("collate", tick)
    return batch
