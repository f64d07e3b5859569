"""Pre-flight data check (`actionlab data check MANIFEST`): open every sample before GPU time is spent.

Each row's path is resolved under the root, its label checked against the class list, and a few
frames spread over its range (the last one included, which catches truncated files) are decoded.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from actionlab import storage
from actionlab.data import decode, frame_folders, manifest
from actionlab.data.dataset import BadSample, fetch_local, frame_range, resolve_media

_FIXES = {
    "missing": "files are missing: check data.root (now {root}) and the manifest paths, or re-download them",
    "empty": "files are empty (0 bytes): re-download or re-extract them",
    "corrupt": "files are unreadable or truncated: re-encode them as H.264 MP4 "
    "(ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p -g 16 OUT.mp4) or drop them from the manifest",
    "short": "media have fewer frames than the manifest says: fix num_frames/start/end or drop the rows",
    "outside_root": "paths escape the data root {root}: move the data inside it or set data.root",
    "label": "labels lie outside the class list: fix the labels or the class list ({num_classes} classes)",
}


@dataclass(frozen=True)
class BadRow:
    """A manifest row that failed the check."""

    video: str
    label: int
    kind: str  # missing | empty | corrupt | short | outside_root | label
    reason: str


@dataclass(frozen=True)
class CheckReport:
    """Result of `check_manifest`."""

    manifest_uri: str
    root: str
    num_rows: int
    num_classes: int | None
    bad: tuple[BadRow, ...] = ()
    bad_list_uri: str = ""
    notes: tuple[str, ...] = ()

    @property
    def num_bad(self) -> int:
        return len(self.bad)

    @property
    def num_ok(self) -> int:
        return self.num_rows - self.num_bad

    @property
    def bad_fraction(self) -> float:
        return self.num_bad / self.num_rows if self.num_rows else 0.0

    def counts(self) -> dict[str, int]:
        """Bad rows per kind."""
        return dict(Counter(row.kind for row in self.bad))

    def summary(self) -> str:
        """What was checked, what is wrong, and what to fix."""
        lines = [
            f"checked {self.num_rows} rows of {self.manifest_uri} under {self.root}: "
            f"{self.num_ok} ok, {self.num_bad} bad"
        ]
        lines.extend(f"note: {note}" for note in self.notes)
        if not self.bad:
            lines.append("no problems found")
            return "\n".join(lines)
        for kind, count in sorted(self.counts().items(), key=lambda kv: -kv[1]):
            fix = _FIXES.get(kind, "see the reasons").format(root=self.root, num_classes=self.num_classes)
            lines.append(f"{count} x {kind}: {fix}")
            for row in [r for r in self.bad if r.kind == kind][:3]:
                lines.append(f"    {row.reason}")
        lines.append(
            f"bad fraction {self.bad_fraction:.3f}: training skips bad samples while the fraction stays under "
            "data.max_bad_fraction and stops with an error above it"
        )
        if self.bad_list_uri:
            lines.append(f"bad-file list: {self.bad_list_uri}")
        return "\n".join(lines)


def _bad_list_csv(rows: tuple[BadRow, ...]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["video", "label", "kind", "reason"])
    for row in rows:
        writer.writerow([row.video, row.label, row.kind, row.reason])
    return buffer.getvalue().encode()


def _spread(length: int, count: int) -> np.ndarray:
    """`count` indices spread over [0, length), first and last included."""
    return np.unique(np.linspace(0, length - 1, max(1, min(count, length))).round().astype(np.int64))


def _check_row(row: dict, *, root: str, num_classes: int | None, frames_to_try: int, cache_dir: str) -> None:
    video = str(row["video"])
    label = int(row["label"])
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else "labels >= 0"
        raise BadSample(video, f"label {label} is outside {bound}", "label")
    uri = resolve_media(root, video)
    if row.get("media", "video") == "frames":
        remote = storage.is_remote(uri)
        has_range = any(pd.notna(row.get(key)) for key in ("num_frames", "end"))
        available = None if has_range or remote else frame_folders.count_frame_files(uri)
        if available == 0:
            raise decode.DecodeError(uri, f"frame folder has no {frame_folders.frame_file('', 0)}", "missing")
        first, length = frame_range(row, available)
        indices = _spread(length, frames_to_try) + first
        if not remote:
            frame_folders.read_frame_folder(uri, indices)
            return
        names = [storage.join(uri, os.path.basename(frame_folders.frame_file("", i))) for i in indices.tolist()]
        frame_folders.read_image_files([fetch_local(name, cache_dir) for name in names], source=uri)
        return
    if storage.is_remote(uri):
        uri = fetch_local(uri, cache_dir)

    def choose(available: int) -> np.ndarray:
        first, length = frame_range(row, available)
        return _spread(length, frames_to_try) + first

    decode.read_sampled(uri, choose)


def check_manifest(
    manifest_uri: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    num_classes: int | None = None,
    frames_to_try: int = 3,
    out_bad_list: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> CheckReport:
    """Opens every row of a manifest and decodes a few frames of each.

    Args:
        manifest_uri: the Parquet manifest.
        root: dataset root; default the one recorded in the manifest, else its folder.
        num_classes: label bound; default the length of `classes.txt` beside the manifest (when present).
        frames_to_try: frames decoded per row, spread over its range, the last frame included.
        out_bad_list: where to write the bad rows as CSV (video, label, kind, reason).
        cache_dir: where remote videos are downloaded; a temporary folder when omitted.

    Returns:
        The report; `summary()` says what to fix.

    Raises:
        manifest.ManifestError: the manifest itself cannot be read.
    """
    manifest_text = os.fspath(manifest_uri)
    df = manifest.read_manifest(manifest_text)
    root_text = os.fspath(root) if root is not None else manifest.default_root(manifest_text)
    notes = []
    if num_classes is None:
        classes_uri = manifest.default_classes(manifest_text)
        if storage.exists(classes_uri):
            num_classes = len(manifest.read_classes(classes_uri))
        else:
            notes.append(f"no {classes_uri}: labels were only checked to be >= 0")
    if "split" not in df.columns:
        notes.append("no split column: every row is used for every split")

    bad = []
    with tempfile.TemporaryDirectory(prefix="actionlab-check-") as scratch:
        cache = os.fspath(cache_dir) if cache_dir is not None else scratch
        for row in df.to_dict("records"):
            try:
                _check_row(row, root=root_text, num_classes=num_classes, frames_to_try=frames_to_try, cache_dir=cache)
            except BadSample as err:
                bad.append(BadRow(str(row["video"]), int(row["label"]), err.kind, str(err)))
            except decode.DecodeError as err:
                bad.append(BadRow(str(row["video"]), int(row["label"]), err.kind, str(err)))

    bad_list_uri = ""
    if out_bad_list is not None:
        bad_list_uri = os.fspath(out_bad_list)
        storage.write_bytes(bad_list_uri, _bad_list_csv(tuple(bad)))
    return CheckReport(
        manifest_uri=manifest_text,
        root=root_text,
        num_rows=len(df),
        num_classes=num_classes,
        bad=tuple(bad),
        bad_list_uri=bad_list_uri,
        notes=tuple(notes),
    )
