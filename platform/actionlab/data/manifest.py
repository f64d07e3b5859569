"""Dataset manifests: Parquet tables of videos or frame folders, and converters from list formats.

A manifest row names one sample:

- `video` (str, required): path relative to the dataset root (or a URI under it). A video file, or
  a folder of JPEG frames `00001.jpg, 00002.jpg, ...` when `media == "frames"`.
- `label` (int, required): class index into the class list (`classes.txt`, one name per line);
  -1 marks an unlabelled test sample.
- `split` (str, optional): `train`, `val`, `test`, ...; without it every row belongs to every split.
- `num_frames` (int, optional): frames in the video or folder.
- `start`, `end` (int, optional): the usable frame range, 0-based and inclusive (a frame folder's
  frame `i` is the file numbered `i + 1`).
- `media` (str, optional): `video` (default) or `frames`.

The file's schema metadata may carry `actionlab` (JSON): what wrote it and how, e.g.
`actionlab data prepare` records its encoding and the decoder it measured fastest for it, and
`actionlab data index` the dataset root (`root`), the default of every command that reads videos.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Literal, get_args

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from actionlab import storage

REQUIRED_COLUMNS = ("video", "label")
OPTIONAL_COLUMNS = ("split", "start", "end", "num_frames", "media")
# Annotation list formats (`data index --format`), declared here once; a new one adds its `_parse_line`
# branch beside this line.
AnnotationFormat = Literal["ibm", "tsn", "mmaction"]
FORMATS = get_args(AnnotationFormat)
# Published class subsets (`data index --subset`): name -> list file shipped in `data/subsets/`.
SUBSETS = {"mini-kinetics": "mini_kinetics.txt", "mini-ssv2": "mini_ssv2.txt"}
MEDIA = ("auto", "video", "frames")
METADATA_KEY = b"actionlab"
METADATA_ATTR = "actionlab"
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")


class ManifestError(ValueError):
    """A manifest, class list or annotation file that cannot be used as it is."""


def read_manifest(uri: str | os.PathLike) -> pd.DataFrame:
    """Reads and validates a Parquet manifest.

    Args:
        uri: local path, `file://` or `s3://` URI of the Parquet file.

    Returns:
        The rows, with `label` (and `start`/`end`/`num_frames` where present) as int64.

    Raises:
        ManifestError: unreadable file, missing column, or values of the wrong type.
    """
    text = os.fspath(uri)
    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(text)))
    except FileNotFoundError:
        raise ManifestError(
            f"manifest {text} does not exist; check data.manifest (or run `actionlab data index`)"
        ) from None
    except (pa.ArrowInvalid, OSError) as err:
        raise ManifestError(f"manifest {text} is not a readable Parquet file ({err})") from None
    frame = table.to_pandas()
    raw_meta = (table.schema.metadata or {}).get(METADATA_KEY)
    frame.attrs[METADATA_ATTR] = json.loads(raw_meta) if raw_meta else {}
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            raise ManifestError(
                f"manifest {text} has no column '{column}'; a manifest needs columns {list(REQUIRED_COLUMNS)} "
                f"(optional {list(OPTIONAL_COLUMNS)}), found {list(frame.columns)}"
            )
    for column in ("label", "start", "end", "num_frames"):
        if column not in frame.columns:
            continue
        if frame[column].isna().any():
            row = int(frame.index[frame[column].isna()][0])
            raise ManifestError(f"manifest {text}: column '{column}' is empty in row {row}; fill it or drop the column")
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise ManifestError(
                f"manifest {text}: column '{column}' must hold integers, found dtype {frame[column].dtype}"
            )
        frame[column] = frame[column].astype("int64")
    if not (pd.api.types.is_string_dtype(frame["video"]) or frame["video"].dtype == object):
        raise ManifestError(f"manifest {text}: column 'video' must hold paths (strings), found {frame['video'].dtype}")
    if "media" in frame.columns:
        unknown = sorted(set(frame["media"]) - {"video", "frames"})
        if unknown:
            raise ManifestError(f"manifest {text}: column 'media' must be 'video' or 'frames', found {unknown}")
    return frame


def read_classes(uri: str | os.PathLike) -> list[str]:
    """Reads a class list: one name per line, blank lines ignored; line order = label index.

    Raises:
        ManifestError: missing or empty file, or a name listed twice.
    """
    text = os.fspath(uri)
    try:
        names = [line.strip() for line in storage.read_text(text).splitlines() if line.strip()]
    except FileNotFoundError:
        raise ManifestError(
            f"class list {text} does not exist; set data.classes to a file with one name per line"
        ) from None
    if not names:
        raise ManifestError(f"class list {text} is empty; it needs one class name per line")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ManifestError(f"class list {text} lists {name!r} twice; each line must be a distinct class")
        seen.add(name)
    return names


def default_root(manifest_uri: str | os.PathLike, df: pd.DataFrame | None = None) -> str:
    """The dataset root used when none is given: the one `data index --root` recorded in the manifest,
    else the manifest's folder.

    Args:
        manifest_uri: the manifest.
        df: the manifest already read (`read_manifest`), to spare reading it again.
    """
    metadata = df.attrs.get(METADATA_ATTR, {}) if df is not None else _metadata(os.fspath(manifest_uri))
    return str(metadata.get("root") or storage.parent(manifest_uri))


def default_root_note(manifest_uri: str | os.PathLike) -> str:
    """Where `default_root` finds the root, as messages name it."""
    if _metadata(os.fspath(manifest_uri)).get("root"):
        return "default: recorded in the manifest by `data index`"
    return "default: the manifest's folder"


def _metadata(uri: str) -> dict:
    """The manifest's `actionlab` metadata; {} when it cannot be read (`read_manifest` says why)."""
    try:
        schema = pq.read_schema(pa.BufferReader(storage.read_bytes(uri)))
    except (pa.ArrowInvalid, OSError):
        return {}
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def default_classes(manifest_uri: str | os.PathLike) -> str:
    """The class list used when none is configured: `classes.txt` beside the manifest."""
    return storage.join(storage.parent(manifest_uri), "classes.txt")


def select_split(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split (all rows when the manifest has no `split` column), re-indexed from 0."""
    if "split" not in df.columns:
        return df.reset_index(drop=True)
    return df[df["split"] == split].reset_index(drop=True)


def manifest_bytes(df: pd.DataFrame, metadata: dict | None = None) -> bytes:
    """A manifest DataFrame as Parquet bytes; `metadata` (JSON) travels in the file's schema metadata
    and comes back as `read_manifest(...).attrs["actionlab"]` (e.g. how `data prepare` encoded it)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               METADATA_KEY: json.dumps(metadata).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def preferred_decoder(df: pd.DataFrame) -> str:
    """The decoder a manifest's writer measured fastest for its files ('' when it names none)."""
    return str(df.attrs.get(METADATA_ATTR, {}).get("decoder", ""))


@dataclass(frozen=True)
class BadLine:
    """An annotation line that was skipped."""

    line_number: int  # 1-based
    content: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.reason}: {self.content!r}"


@dataclass(frozen=True)
class IndexReport:
    """What `index_annotations` wrote and skipped."""

    annotation_uri: str
    out_uri: str
    fmt: str
    root: str
    num_lines: int
    num_rows: int
    num_unlabelled: int
    media_counts: dict = field(default_factory=dict)
    bad_lines: tuple[BadLine, ...] = ()
    classes_uri: str = ""
    subset: str = ""
    num_outside_subset: int = 0

    def summary(self) -> str:
        """A few lines for people: counts, skipped lines, where the manifest went."""
        media = ", ".join(f"{count} {kind}" for kind, count in sorted(self.media_counts.items()))
        lines = [
            f"indexed {self.annotation_uri} ({self.fmt}): {self.num_rows} of {self.num_lines} lines -> "
            f"{self.out_uri} ({media})"
        ]
        if self.subset:
            lines.append(
                f"subset {self.subset}: dropped {self.num_outside_subset} lines of other classes (or unlabelled); "
                f"labels renumbered to {self.classes_uri}"
            )
        if self.num_unlabelled:
            lines.append(f"{self.num_unlabelled} test lines without a label were given label -1")
        if self.bad_lines:
            lines.append(f"skipped {len(self.bad_lines)} bad lines (fix them in {self.annotation_uri} and re-run):")
            lines.extend(f"  {bad}" for bad in self.bad_lines[:20])
            if len(self.bad_lines) > 20:
                lines.append(f"  ... and {len(self.bad_lines) - 20} more")
        if _normalised(storage.parent(self.out_uri)) != _normalised(self.root):
            lines.append(f"the videos live under {self.root}: train with data.root={self.root}")
        return "\n".join(lines)


def _normalised(uri: str) -> str:
    return uri.rstrip("/") if storage.is_remote(uri) else os.path.abspath(uri.removeprefix("file://"))


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an integer") from None


def _parse_line(line: str, fmt: str) -> dict:
    """One annotation line as manifest fields; raises ValueError with the reason."""
    if fmt == "ibm":
        fields = [f.strip() for f in line.split(";")] if ";" in line else line.split()
        if len(fields) not in (3, 4):
            raise ValueError(f"expected 'path start end [label]' (3 or 4 fields), found {len(fields)}")
        start = _parse_int(fields[1], "start frame")
        end = _parse_int(fields[2], "end frame")
        if start < 1 or end < start:
            raise ValueError(f"frame range {start}..{end} is empty or not 1-based")
        label = _parse_int(fields[3], "label") if len(fields) == 4 else -1
        # IBM frames are 1-based and inclusive; manifests use 0-based inclusive ranges.
        return {"video": fields[0], "label": label, "start": start - 1, "end": end - 1, "num_frames": end - start + 1}
    if fmt == "tsn":
        fields = line.rsplit(maxsplit=2)  # folder names may contain spaces; the two numbers cannot
        if len(fields) != 3:
            raise ValueError(f"expected 'folder num_frames label' (3 fields), found {len(fields)}")
        num_frames = _parse_int(fields[1], "frame count")
        if num_frames < 1:
            raise ValueError(f"frame count {num_frames} must be at least 1")
        return {"video": fields[0], "label": _parse_int(fields[2], "label"), "num_frames": num_frames}
    if fmt == "mmaction":
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise ValueError(f"expected 'file label' (2 fields), found {len(fields)}")
        return {"video": fields[0], "label": _parse_int(fields[1], "label")}
    raise ManifestError(f"unknown annotation format {fmt!r}; use one of {list(FORMATS)}")


def _relative_to_root(video: str, root: str) -> str:
    """Annotation paths may be absolute (IBM's SSv2 lists); manifests keep them relative to the root."""
    if storage.is_remote(video) or not os.path.isabs(video) or storage.is_remote(root):
        return video
    relative = os.path.relpath(video, os.path.abspath(root))
    if relative == ".." or relative.startswith(".." + os.sep):
        raise ValueError(f"absolute path is outside the root {root}; move the data or pass the right root")
    return relative


def subset_classes(name: str) -> list[str]:
    """The class names of a published subset (`mini-kinetics`: 200, `mini-ssv2`: 87), in label order.

    The lists ship in `actionlab/data/subsets/`; each file's header comment names its source.
    """
    if name not in SUBSETS:
        raise ManifestError(f"unknown subset {name!r}; use one of {sorted(SUBSETS)}")
    text = (Path(__file__).parent / "subsets" / SUBSETS[name]).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _class_key(name: str) -> str:
    """Spellings of one class across lists: case, `_` for spaces, quotes and SSv2's [something] brackets."""
    return " ".join(name.lower().replace("_", " ").replace("[", "").replace("]", "").strip("\"'").split())


def _subset_mapping(classes: list[str], subset: str, classes_uri: str) -> tuple[list[str], dict[int, int]]:
    """(subset names, full label -> subset label); every subset class must be in the full list."""
    names = subset_classes(subset)
    index = {_class_key(c): i for i, c in enumerate(classes)}
    missing = [n for n in names if _class_key(n) not in index]
    if missing:
        raise ManifestError(
            f"subset {subset!r}: {len(missing)} of its {len(names)} classes are not in {classes_uri}: {missing[:10]}; "
            f"pass the full class list of the dataset the subset was drawn from"
        )
    return names, {index[_class_key(n)]: i for i, n in enumerate(names)}


def index_annotations(
    annotation_uri: str | os.PathLike,
    *,
    fmt: str,
    root: str | os.PathLike,
    classes_uri: str | os.PathLike,
    out_uri: str | os.PathLike,
    media: str = "auto",
    split: str | None = None,
    subset: str | None = None,
) -> IndexReport:
    """Converts an annotation list into a Parquet manifest (`actionlab data index`).

    Formats: `ibm` (`path start end [label]`, space or `;` separated, detected per line; lines
    without a label are test lines and get label -1; frame numbers 1-based and inclusive), `tsn`
    (`folder num_frames label`, also mmaction2's rawframe lists) and `mmaction` (`file label`).
    Bad lines (too few fields, non-integer numbers, labels outside the class list) are skipped and
    listed in the report with their line numbers. Blank lines and `#` comments are ignored.
    The class list is copied beside the manifest when none is there yet, so the manifest's default
    class list is the right one.

    Args:
        annotation_uri: the list file.
        fmt: `ibm`, `tsn` or `mmaction`.
        root: folder the paths in the list are relative to (absolute paths must lie inside it).
        classes_uri: class list (one name per line) that the labels index.
        out_uri: where the Parquet manifest is written.
        media: `video`, `frames` (JPEG folders), or `auto` (by file suffix: a known video suffix
            means a video, anything else a frame folder).
        split: value of a `split` column to write; none is written when omitted.
        subset: a published class subset (`mini-kinetics`, `mini-ssv2`; see `SUBSETS`): only lines of
            its classes are kept (unlabelled test lines are dropped), labels are renumbered in the
            subset's order, and the subset's class list is written beside the manifest.

    Returns:
        The report; `summary()` says what was skipped.

    Raises:
        ManifestError: unknown format or media, missing files, or no usable line at all.
    """
    if fmt not in FORMATS:
        raise ManifestError(f"unknown annotation format {fmt!r}; use one of {list(FORMATS)}")
    if media not in MEDIA:
        raise ManifestError(f"unknown media {media!r}; use one of {list(MEDIA)}")
    source = os.fspath(annotation_uri)
    root_text = os.fspath(root)
    classes = read_classes(classes_uri)
    mapping = None
    if subset is not None:
        subset_names, mapping = _subset_mapping(classes, subset, os.fspath(classes_uri))
    try:
        text = storage.read_text(source)
    except FileNotFoundError:
        raise ManifestError(f"annotation file {source} does not exist") from None

    rows, bad = [], []
    num_lines = num_outside = 0
    for line_number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        num_lines += 1
        try:
            row = _parse_line(line, fmt)
            row["video"] = _relative_to_root(row["video"], root_text)
            if not (row["label"] == -1 and fmt == "ibm") and not 0 <= row["label"] < len(classes):
                classes_text = os.fspath(classes_uri)
                raise ValueError(f"label {row['label']} is outside the {len(classes)} classes of {classes_text}")
        except ValueError as err:
            bad.append(BadLine(line_number, raw, str(err)))
            continue
        if mapping is not None:
            if row["label"] not in mapping:
                num_outside += 1
                continue
            row["label"] = mapping[row["label"]]
        if media == "auto":
            row["media"] = "video" if row["video"].lower().endswith(VIDEO_SUFFIXES) else "frames"
        else:
            row["media"] = media
        rows.append(row)

    if not rows:
        detail = "; ".join(str(b) for b in bad[:5]) or "the file has no annotation lines"
        raise ManifestError(f"no usable line in {source} as format '{fmt}': {detail}")

    frame = pd.DataFrame(rows)
    if split is not None:
        frame.insert(2, "split", split)
    for column in ("label", "start", "end", "num_frames"):
        if column in frame.columns:
            frame[column] = frame[column].astype("int64")
    out_text = os.fspath(out_uri)
    # Recorded, so that every later command finds the videos without being given the root again.
    recorded = root_text if "://" in root_text else str(Path(root_text).expanduser().resolve())
    storage.write_bytes(out_text, manifest_bytes(frame, {"root": recorded}))

    beside = default_classes(out_text)
    if mapping is not None:
        listing = ("\n".join(subset_names) + "\n").encode()
        if storage.exists(beside) and read_classes(beside) != subset_names:
            raise ManifestError(
                f"{beside} already holds another class list; the {subset} manifest needs its own: write it to "
                "another folder or remove that file"
            )
        storage.write_bytes(beside, listing)
    elif not storage.exists(beside):
        storage.write_bytes(beside, storage.read_bytes(classes_uri))
    return IndexReport(
        annotation_uri=source,
        out_uri=out_text,
        fmt=fmt,
        root=root_text,
        num_lines=num_lines,
        num_rows=len(rows),
        num_unlabelled=int((frame["label"] == -1).sum()),
        media_counts={str(k): int(v) for k, v in frame["media"].value_counts().items()},
        bad_lines=tuple(bad),
        classes_uri=beside,
        subset=subset or "",
        num_outside_subset=num_outside,
    )
