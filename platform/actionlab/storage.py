"""URIs for datasets and checkpoints: local paths, `file://` and `s3://`, through `pyarrow.fs`.

`pyarrow.fs.FileSystem.from_uri` takes credentials from the standard AWS chain and the endpoint from
`AWS_ENDPOINT_URL`, so any S3-compatible store works without code changes. Remote files that a
decoder must open by path (decord, PIL) are fetched once into a local read-through cache
(`local_copy`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

_CHUNK_BYTES = 1 << 20


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs with a scheme other than `file://` (e.g. `s3://bucket/key`)."""
    text = os.fspath(uri)
    return "://" in text and not text.startswith("file://")


def _local_path(uri: str | os.PathLike) -> str:
    text = os.fspath(uri)
    if text.startswith("file://"):
        return urlsplit(text).path
    return text


@functools.lru_cache(maxsize=32)
def _remote_filesystem(scheme_netloc: str, endpoint: str | None) -> pafs.FileSystem:
    # One filesystem per bucket (and endpoint): `from_uri` resolves the bucket region with a request.
    del endpoint  # part of the cache key only: pyarrow reads AWS_ENDPOINT_URL itself
    filesystem, _ = pafs.FileSystem.from_uri(scheme_netloc)
    return filesystem


def _resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A filesystem and the path inside it for any supported URI."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(_local_path(uri))
    parts = urlsplit(os.fspath(uri))
    filesystem = _remote_filesystem(f"{parts.scheme}://{parts.netloc}", os.environ.get("AWS_ENDPOINT_URL"))
    return filesystem, f"{parts.netloc}{parts.path}".rstrip("/")


def read_bytes(uri: str | os.PathLike) -> bytes:
    """Reads a whole file.

    Raises:
        FileNotFoundError: the file does not exist (the message names the URI).
    """
    filesystem, path = _resolve(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{os.fspath(uri)}: no such file") from None
    except OSError as err:
        if "not found" in str(err).lower() or "does not exist" in str(err).lower():
            raise FileNotFoundError(f"{os.fspath(uri)}: no such file ({err})") from None
        raise


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Reads a whole text file."""
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Writes a file, creating parent folders; local writes are atomic (temp name, then rename)."""
    if not is_remote(uri):
        path = Path(_local_path(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    filesystem, path = _resolve(uri)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def exists(uri: str | os.PathLike) -> bool:
    """True when a file or folder exists at `uri`."""
    filesystem, path = _resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def join(base: str | os.PathLike, *parts: str) -> str:
    """Joins path segments onto a local path or URI (URIs always use `/`)."""
    text = os.fspath(base)
    if "://" in text:
        segments = [text.rstrip("/")] + [p.strip("/") for p in parts if p]
        return "/".join(segments)
    return os.path.join(text, *parts)


def parent(uri: str | os.PathLike) -> str:
    """The folder that holds `uri` (same scheme)."""
    text = os.fspath(uri).rstrip("/")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        head = posixpath.dirname(rest)
        return f"{scheme}://{head}" if head else f"{scheme}://"
    return str(Path(text).parent)


def local_copy(uri: str | os.PathLike, cache_dir: str | os.PathLike) -> str:
    """A local path for `uri`: local files as they are, remote files downloaded once into `cache_dir`.

    The cache key is a hash of the URI (the file name's suffix is kept so decoders can sniff it);
    a download lands under a temporary name first, so a crash never leaves a partial file.

    Raises:
        FileNotFoundError: the remote file does not exist.
    """
    if not is_remote(uri):
        return _local_path(uri)
    text = os.fspath(uri)
    suffix = Path(urlsplit(text).path).suffix
    key = hashlib.sha256(text.encode()).hexdigest()[:32]
    target = Path(cache_dir) / key[:2] / f"{key}{suffix}"
    if target.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    filesystem, path = _resolve(uri)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{key}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with filesystem.open_input_stream(path) as stream:
                    shutil.copyfileobj(stream, out, _CHUNK_BYTES)
            except FileNotFoundError:
                raise FileNotFoundError(f"{text}: no such file") from None
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(target)
