"""The size-bounded local read-through cache for remote media that a decoder must open by path (decord, PIL).

Entries are keyed by URI and version: the ETag that pyarrow's S3 input streams carry in their
metadata (size and mtime where a store gives none), so a replaced object is fetched again. The
cache is kept under a size limit by evicting the least recently used files. A full disk under the
cache evicts more (and leftovers of downloads that died) until the video fits, or fails with
`CacheFullError` naming the folder and the knobs.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from .retry import RetriesExhausted, is_missing, resolve, retrying
from .uris import is_remote, local_path, redact

log = logging.getLogger(__name__)

CACHE_MAX_GB_ENV = "ACTIONLAB_CACHE_MAX_GB"  # size limit of the video cache (default 20)
_DEFAULT_CACHE_MAX_GB = 20.0
_DOWNLOAD_CHUNK_BYTES = 8 << 20  # one ranged GET each: pyarrow's S3 streams read exactly what is asked
_VERSION_TTL_S = 600.0  # how long a looked-up ETag is trusted before the object is asked again
_LOW_WATER = 0.9  # eviction frees space down to this fraction of the limit, so scans stay rare
_DISK_SLACK_BYTES = 1 << 16  # room kept beyond a video's size when a full disk is cleared (block rounding)
_STALE_PART_S = 600.0  # a `.part` file untouched this long belongs to a download that died
_ACCESS_DENIED = re.compile(r"ACCESS_DENIED|HTTP (response code: |status )403")


class CacheFullError(OSError):
    """The disk under the video cache has no room for a video, even after evicting every cached one."""


class _ChangedWhileReading(Exception):
    pass


def cache_max_bytes() -> int:
    """The video cache's size limit: `ACTIONLAB_CACHE_MAX_GB` (default 20 GB)."""
    return int(float(os.environ.get(CACHE_MAX_GB_ENV) or _DEFAULT_CACHE_MAX_GB) * 1e9)


def _missing_error(uri: str, err: Exception | None = None) -> FileNotFoundError:
    detail = f" ({err})" if err else ""
    return FileNotFoundError(f"{redact(uri)}: no such object{detail}")


def _etag(metadata: dict) -> str | None:
    value = metadata.get("ETag")
    return value.decode().strip('"') if value else None


def _look_up(uri: str) -> tuple[str, int]:
    """(version, size in bytes) of a remote object, asked from the store."""
    filesystem, path = resolve(uri)

    def look_up() -> tuple[str, int]:
        with filesystem.open_input_stream(path) as stream:  # on S3 a HEAD request; nothing is read yet
            metadata = stream.metadata()
        if (etag := _etag(metadata)) is not None:
            return etag, int(metadata.get("Content-Length") or 0)
        info = filesystem.get_file_info(path)
        return f"{info.size}-{info.mtime_ns}", int(info.size or 0)

    try:
        return retrying("look up", uri, look_up)
    except FileNotFoundError:
        raise _missing_error(uri) from None
    except RetriesExhausted:
        raise
    except OSError as err:
        if _ACCESS_DENIED.search(str(err)):
            raise PermissionError(
                f"{redact(uri)}: access denied (S3 answers 403 also for a missing object when the credentials "
                "may not list the bucket); check the object and the credentials' read permission"
            ) from None
        if is_missing(err):
            raise _missing_error(uri, err) from None
        raise


_versions: dict[str, tuple[str, int, float]] = {}  # uri -> (version, size in bytes, looked up at)
_versions_lock = threading.Lock()


def object_version(uri: str, *, refresh: bool = False) -> str:
    """The ETag of a remote object (size + mtime where the store has none); looked up at most every 10 min.

    Raises:
        FileNotFoundError: the object does not exist (the message names the URI).
        PermissionError: the credentials may not read it.
    """
    now = time.monotonic()
    with _versions_lock:
        cached = _versions.get(uri)
    if cached and not refresh and now - cached[2] < _VERSION_TTL_S:
        return cached[0]
    version, size = _look_up(uri)
    with _versions_lock:
        if len(_versions) > 100_000:
            _versions.clear()
        _versions[uri] = (version, size, now)
    return version


def _download(uri: str, version: str, out) -> None:
    """Copies the object's bytes of `version` into `out` (raises `_ChangedWhileReading` otherwise)."""
    filesystem, path = resolve(uri)
    try:
        with filesystem.open_input_stream(path) as stream:
            if _etag(stream.metadata()) not in (None, version):
                raise _ChangedWhileReading()
            shutil.copyfileobj(stream, out, _DOWNLOAD_CHUNK_BYTES)
    except FileNotFoundError:
        raise _missing_error(uri) from None
    # pyarrow reads in ranged GETs without If-Match, so an object replaced during the read would mix
    # versions unnoticed (verified on moto): the version is asked again, and the bytes kept only if equal.
    if _look_up(uri)[0] != version:
        raise _ChangedWhileReading()


_cache_estimates: dict[str, int] = {}  # cache dir -> bytes this process believes it holds
_cache_lock = threading.Lock()


def _cache_files(cache_dir: Path) -> list[tuple[float, int, Path]]:
    files = []
    for path in cache_dir.glob("*/*"):
        if path.name.startswith("."):
            continue  # downloads in progress
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # evicted by another process meanwhile
        files.append((st.st_mtime, st.st_size, path))
    return files


def _enforce_limit(cache_dir: Path, added: int, max_bytes: int, keep: Path) -> None:
    """Evicts least recently used files once the cache is over `max_bytes`.

    The folder is scanned only when this process's running estimate crosses the limit (and once at
    first use); eviction goes down to 90 % of the limit so that the next scan is far away. The file
    just fetched is never evicted, even when it alone is over the limit.
    """
    key = str(cache_dir)
    with _cache_lock:
        estimate = _cache_estimates.get(key)
        if estimate is not None and estimate + added <= max_bytes:
            _cache_estimates[key] = estimate + added
            return
        files = _cache_files(cache_dir)
        total = sum(size for _, size, _ in files)
        if total > max_bytes:
            for _, size, path in sorted(files, key=lambda f: f[0]):
                if total <= max_bytes * _LOW_WATER:
                    break
                if path == keep:
                    continue
                path.unlink(missing_ok=True)
                total -= size
        _cache_estimates[key] = total


def _make_room(cache_dir: Path, need: int) -> None:
    """Frees disk space under the cache for `need` bytes: leftovers of dead downloads first, then the
    least recently used videos, until the disk has that much free (or nothing is left to evict)."""
    with _cache_lock:
        now = time.time()
        for part in cache_dir.glob("*/.*.part"):
            try:
                if now - part.stat().st_mtime > _STALE_PART_S:
                    part.unlink()
            except FileNotFoundError:
                pass
        for _, _, path in sorted(_cache_files(cache_dir), key=lambda f: f[0]):
            if shutil.disk_usage(cache_dir).free >= need + _DISK_SLACK_BYTES:
                break
            path.unlink(missing_ok=True)
        _cache_estimates.pop(str(cache_dir), None)  # rescanned at the next fetch


def _fetch_to(tmp: str, uri: str, version: str, cache_dir: Path) -> None:
    """Downloads `uri` into the file `tmp` (retrying transient errors); a full disk makes room once."""

    def fetch() -> None:
        with open(tmp, "wb") as out:
            _download(uri, version, out)

    try:
        retrying("download", uri, fetch)
        return
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
    with _versions_lock:
        need = (_versions.get(uri) or ("", 0, 0.0))[1]
    os.truncate(tmp, 0)  # the partial bytes must not count against the room being made
    log.warning("video cache %s: disk full while fetching %s; evicting least recently used videos",
                cache_dir, redact(uri))
    _make_room(cache_dir, need)
    try:
        retrying("download", uri, fetch)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(cache_dir).free
        raise CacheFullError(
            errno.ENOSPC,
            f"the video cache {cache_dir} is out of disk space: {redact(uri)} needs {need / 1e6:.2f} MB and its disk "
            f"has {free / 1e6:.2f} MB free after evicting every cached video. Free space on that disk or move the cache "
            f"to a bigger one (data.cache_dir, or ACTIONLAB_HOME whose cache/ folder is the default), and keep "
            f"{CACHE_MAX_GB_ENV} below the free space",
        ) from None


def local_copy(uri: str | os.PathLike, cache_dir: str | os.PathLike, *, max_bytes: int | None = None) -> str:
    """A local path for `uri`: local files as they are, remote files through the read-through cache.

    The cache key is a hash of the URI and the object's ETag, so a replaced object is fetched again;
    the file name keeps the suffix so decoders can sniff it. Downloads land under a temporary name
    first (a crash never leaves a partial file), hits refresh the file's mtime, and the least
    recently used files are evicted once the cache is over `max_bytes` (default `cache_max_bytes()`).

    Raises:
        FileNotFoundError: the remote object does not exist (the message names the URI).
        CacheFullError: the cache's disk has no room for the file even after evicting everything.
        OSError: the download kept failing after retries.
    """
    if not is_remote(uri):
        return local_path(uri)
    text = os.fspath(uri)
    suffix = Path(urlsplit(text).path).suffix
    cache = Path(cache_dir)
    for refresh in (False, True):
        version = object_version(text, refresh=refresh)
        key = hashlib.sha256(f"{redact(text)}\n{version}".encode()).hexdigest()[:32]
        target = cache / key[:2] / f"{key}{suffix}"
        if target.exists():
            try:
                os.utime(target)  # least recently *used* goes first
            except FileNotFoundError:
                pass  # evicted just now by another process: fetch it again below
            else:
                return str(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{key}.", suffix=".part")
        os.close(fd)
        try:
            try:
                _fetch_to(tmp, text, version, cache)
            except _ChangedWhileReading:
                continue  # replaced between the version lookup and the read: look it up again
            except (FileNotFoundError, CacheFullError, RetriesExhausted):
                raise
            except OSError as err:
                if is_missing(err):
                    raise _missing_error(text, err) from None
                raise
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _enforce_limit(cache, target.stat().st_size, max_bytes if max_bytes is not None else cache_max_bytes(),
                       keep=target)
        return str(target)
    raise OSError(f"{redact(text)} kept changing while it was downloaded; try again")
