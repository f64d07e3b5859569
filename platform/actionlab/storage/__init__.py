"""Files behind URIs for datasets and checkpoints: local paths, `file://` and `s3://`, through `pyarrow.fs`.

`pyarrow.fs.FileSystem.from_uri` takes credentials from the standard AWS chain (or the URI) and the
endpoint from `AWS_ENDPOINT_URL`, so any S3-compatible store works without code changes.

- `uris`: URIs as text (`is_remote`, `join`, `parent`, the one parser `split_remote`) and `redact`.
- `retry`: the filesystems behind URIs (`resolve`), the retry layer of every remote operation
  (`retrying`: connection drops, throttling, 5xx, with backoff; a missing object is a
  `FileNotFoundError` that names the URI) and the retrying filesystem Ray Train writes through
  (`ray_storage`).
- `cache`: the size-bounded local read-through cache for media a decoder opens by path (`local_copy`).
- `scratch`: local scratch folders whose leftovers from a killed process are removed by the next one
  (`scratch_dir`).
- here: whole-file reads and writes, `exists` and `upload_dir`.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.fs as pafs

# The public API, re-exported from the modules that implement it.
from .cache import CACHE_MAX_GB_ENV, CacheFullError, cache_max_bytes, local_copy, object_version
from .retry import (MAX_ATTEMPTS_ENV, RetriesExhausted, RetryingHandler, is_missing, is_transient, ray_storage,
                    resolve, retrying)
from .scratch import scratch_dir
from .uris import is_remote, join, local_path, parent, redact, redact_text, split_remote


def read_bytes(uri: str | os.PathLike) -> bytes:
    """Reads a whole file.

    Raises:
        FileNotFoundError: the file does not exist (the message names the URI).
    """
    filesystem, path = resolve(uri)

    def read() -> bytes:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()

    try:
        return retrying("read", uri, read) if is_remote(uri) else read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{redact(uri)}: no such file") from None
    except RetriesExhausted:
        raise
    except OSError as err:
        if is_missing(err):
            raise FileNotFoundError(f"{redact(uri)}: no such file ({err})") from None
        raise


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Reads a whole text file."""
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Writes a file, creating parent folders; local writes are atomic (temp name, then rename)."""
    if not is_remote(uri):
        path = Path(local_path(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    filesystem, path = resolve(uri)

    def write() -> None:
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)

    retrying("write", uri, write)


def exists(uri: str | os.PathLike) -> bool:
    """True when a file or folder exists at `uri`."""
    filesystem, path = resolve(uri)
    info = retrying("look up", uri, lambda: filesystem.get_file_info(path))
    return info.type != pafs.FileType.NotFound


def upload_dir(local_dir: str | os.PathLike, uri: str, *, num_threads: int = 8) -> tuple[int, int]:
    """Copies every file under `local_dir` to the same relative path under `uri`; rewrites nothing.

    Hidden files and folders (names starting with `.`) are skipped. Each file is one `pyarrow.fs.copy_files`,
    retried on its own (one call for the folder would also copy hidden files, write an empty marker
    object per folder, and start over on a dropped connection).

    Returns:
        (number of files, number of bytes) uploaded.

    Raises:
        FileNotFoundError: `local_dir` is not a folder, or the bucket does not exist.
    """
    source = Path(local_dir).absolute()
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a folder; give the dataset folder (with manifest.parquet)")
    if is_remote(uri):
        bucket_uri, _ = split_remote(uri)
        if not exists(bucket_uri):
            raise FileNotFoundError(f"bucket {redact(bucket_uri)} does not exist or is not visible with these "
                                    "credentials; create it first (e.g. `aws s3 mb`)")
    files = []
    for folder, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
    filesystem, root = resolve(uri)
    local = pafs.LocalFileSystem()

    def upload(path: Path) -> int:
        relative = path.relative_to(source).as_posix()
        target = f"{root.rstrip('/')}/{relative}"
        if not is_remote(uri):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        retrying("upload to", join(uri, relative), lambda: pafs.copy_files(
            str(path), target, source_filesystem=local, destination_filesystem=filesystem))
        return path.stat().st_size

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        sizes = list(pool.map(upload, files))
    return len(files), sum(sizes)
