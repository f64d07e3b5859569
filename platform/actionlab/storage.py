"""URIs for datasets and checkpoints: local paths, `file://` and `s3://`, through `pyarrow.fs`.

`pyarrow.fs.FileSystem.from_uri` takes credentials from the standard AWS chain and the endpoint from
`AWS_ENDPOINT_URL`, so any S3-compatible store works without code changes. boto3 (same chain, same
endpoint variable) fills the one gap that matters here: pyarrow exposes no ETag.

Remote operations are retried with exponential backoff on transient errors (connection drops,
throttling, 5xx); a missing object is a `FileNotFoundError` that names the URI. Remote media that a
decoder must open by path (decord, PIL) go through a local read-through cache (`local_copy`) keyed by
URI and ETag, so a changed object is fetched again, and kept under a size limit by evicting the
least recently used files. A full disk under the cache evicts more (and leftovers of downloads that
died) until the video fits, or fails with `CacheFullError` naming the folder and the knobs.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import posixpath
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
MAX_ATTEMPTS_ENV = "ACTIONLAB_S3_MAX_ATTEMPTS"  # total tries of one remote operation (default 8)
CACHE_MAX_GB_ENV = "ACTIONLAB_CACHE_MAX_GB"  # size limit of the video cache (default 20)
# 8 tries with backoff doubling from 0.5 s up to 8 s wait 16-31 s in all: a storage endpoint that goes
# away for a few seconds (a restart, a failover) costs a pause, not a sample or a worker-group restart.
_DEFAULT_MAX_ATTEMPTS = 8
_DEFAULT_CACHE_MAX_GB = 20.0
_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 8.0
_VERSION_TTL_S = 600.0  # how long a looked-up ETag is trusted before the object is asked again
_LOW_WATER = 0.9  # eviction frees space down to this fraction of the limit, so scans stay rare
_DISK_SLACK_BYTES = 1 << 16  # room kept beyond a video's size when a full disk is cleared (block rounding)
_STALE_PART_S = 600.0  # a `.part` file untouched this long belongs to a download that died

# Substrings of pyarrow / AWS SDK / botocore messages for errors worth another try.
_TRANSIENT = re.compile(
    r"NETWORK_CONNECTION|curlCode|SLOW_?DOWN|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|REQUEST_?TIME_?OUT|THROTTL"
    r"|HTTP response code: 5\d\d|Connection (reset|refused|aborted)|timed out|Broken pipe|temporarily",
    re.IGNORECASE,
)
_SECRET_QUERY_KEYS = {"access_key", "secret_key", "session_token", "password", "token", "x-amz-security-token",
                      "x-amz-signature", "x-amz-credential"}


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs with a scheme other than `file://` (e.g. `s3://bucket/key`)."""
    text = os.fspath(uri)
    return "://" in text and not text.startswith("file://")


def redact(uri: str | os.PathLike) -> str:
    """`uri` without credentials (user:password@, secret query parameters); safe to log or print."""
    text = os.fspath(uri)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs)
    if "@" not in parts.netloc and not secret_query:
        return text  # nothing to hide; returned untouched (urlunsplit would drop `sqlite:////`'s empty host)
    netloc = f"***@{parts.netloc.rsplit('@', 1)[-1]}" if "@" in parts.netloc else parts.netloc
    query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*:/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_USERINFO_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET_QUERY_IN_TEXT = re.compile(r"([?&](?:access_key|secret_key|session_token|password|token)=)[^&\s'\"]+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """`text` (a YAML dump, an error message) with every URI's credentials replaced by `***`."""
    return _SECRET_QUERY_IN_TEXT.sub(r"\1***", _USERINFO_IN_TEXT.sub(r"\1***@", text))


def _local_path(uri: str | os.PathLike) -> str:
    text = os.fspath(uri)
    if text.startswith("file://"):
        return urlsplit(text).path
    return text


# --- retries ----------------------------------------------------------------------------------------


class RetriesExhausted(OSError):
    """A remote operation still failed with transient errors after the last attempt: the store is
    unreachable, which says nothing about the object (callers must not count it as a bad file)."""


def is_transient(err: BaseException) -> bool:
    """True for errors that another try may fix: connection drops, throttling, server-side 5xx."""
    if isinstance(err, FileNotFoundError | PermissionError | RetriesExhausted):
        return False  # an exhausted retry is not retried again by an enclosing one
    response = getattr(err, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or bool(_TRANSIENT.search(code))
    name = type(err).__name__
    if name in {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
                "ResponseStreamingError", "IncompleteReadError"}:
        return True
    return isinstance(err, OSError | ConnectionError | TimeoutError) and bool(_TRANSIENT.search(str(err)))


def _max_attempts() -> int:
    return max(1, int(os.environ.get(MAX_ATTEMPTS_ENV) or _DEFAULT_MAX_ATTEMPTS))


def retrying(action: str, uri: str | os.PathLike, fn):
    """Calls `fn()`, retrying transient errors with capped exponential backoff and jitter.

    Hand-written because pyarrow's own S3 retry strategy is not configurable through `from_uri` and
    is lost when the filesystem is serialised to Ray workers (apache/arrow#47348).

    Raises:
        RetriesExhausted: still failing after the last attempt (the message names the URI and the attempts).
    """
    attempts = _max_attempts()
    delay = _BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:
            if not is_transient(err):
                raise
            if attempt == attempts:
                raise RetriesExhausted(f"{action} {redact(uri)} failed after {attempts} attempts: {err}") from err
            wait = delay * random.uniform(0.5, 1.0)
            log.warning("%s %s failed (attempt %d/%d), retrying in %.1fs: %s", action, redact(uri), attempt,
                        attempts, wait, err)
            time.sleep(wait)
            delay = min(delay * 2, _MAX_BACKOFF_S)


def _is_missing(err: OSError) -> bool:
    text = str(err).lower()
    return "not found" in text or "does not exist" in text or "nosuchkey" in text or "no such" in text


# --- filesystems --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _remote_filesystem(base_uri: str, endpoint: str | None) -> pafs.FileSystem:
    # One filesystem per bucket (and endpoint): `from_uri` resolves the bucket region with a request.
    del endpoint  # part of the cache key only: pyarrow reads AWS_ENDPOINT_URL itself
    filesystem, _ = pafs.FileSystem.from_uri(base_uri)
    return filesystem


def _resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A filesystem and the path inside it for any supported URI."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(_local_path(uri))
    base, path = _split_remote(uri)
    filesystem = retrying("connect to", uri, lambda: _remote_filesystem(base, os.environ.get("AWS_ENDPOINT_URL")))
    return filesystem, path


def _split_remote(uri: str | os.PathLike) -> tuple[str, str]:
    """A remote URI as (the URI that configures its filesystem, the path inside that filesystem)."""
    parts = urlsplit(os.fspath(uri))
    # The query (e.g. `?endpoint_override=...&scheme=http`) configures the filesystem, as in Ray's docs.
    base = f"{parts.scheme}://{parts.netloc}" + (f"?{parts.query}" if parts.query else "")
    bucket = parts.netloc.rsplit("@", 1)[-1]
    return base, f"{bucket}{parts.path}".rstrip("/")


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """`storage_path` and `storage_filesystem` for a Ray `RunConfig` (or `Tuner.restore`) rooted at `uri`.

    A remote root gets a filesystem whose every call is retried like the rest of this module: Ray's
    controller writes its checkpoint snapshot with one bare call, and a storage endpoint away for a few
    seconds at that moment failed the whole run (a controller error, which no restart covers). Local
    roots are left to Ray.
    """
    if not is_remote(uri):
        return uri, None
    base, path = _split_remote(uri)
    return path, pafs.PyFileSystem(RetryingHandler(base))


class RetryingHandler(pafs.FileSystemHandler):
    """A remote filesystem (`from_uri(base)`) whose calls are retried on transient errors (`retrying`).

    Writes are spooled locally and uploaded when the stream is closed, so a failure halfway through is
    retried from the first byte; the upload writes synchronously (no background writes), which keeps
    pyarrow's threaded `copy_files` from waiting on its own IO pool. It pickles as its URI: each Ray
    process rebuilds the filesystem (pyarrow drops an S3 retry strategy when one is pickled, arrow#47348).
    """

    def __init__(self, base_uri: str):
        self.base_uri = base_uri
        self._fs: pafs.FileSystem | None = None
        self._writer: pafs.FileSystem | None = None

    def __getstate__(self) -> dict:
        return {"base_uri": self.base_uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["base_uri"])

    def __eq__(self, other) -> bool:
        return isinstance(other, RetryingHandler) and other.base_uri == self.base_uri

    def __ne__(self, other) -> bool:
        return not self == other

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = retrying("connect to", self.base_uri,
                                lambda: _remote_filesystem(self.base_uri, os.environ.get("AWS_ENDPOINT_URL")))
        return self._fs

    @property
    def writer(self) -> pafs.FileSystem:
        if self._writer is None:
            _, (options,) = self.fs.__reduce__()  # the options `from_uri` resolved (region, endpoint, ...)
            self._writer = pafs.S3FileSystem(**{**options, "background_writes": False}) \
                if isinstance(self.fs, pafs.S3FileSystem) else self.fs
        return self._writer

    def _call(self, action: str, path: str, fn):
        return retrying(action, f"{self.base_uri.split('://')[0]}://{path}", fn)

    def get_type_name(self) -> str:
        return f"retrying+{self.fs.type_name}"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self._call("look up", paths[0] if paths else "", lambda: self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector):
        return self._call("list", selector.base_dir, lambda: self.fs.get_file_info(selector))

    def create_dir(self, path, recursive):
        self._call("create", path, lambda: self.fs.create_dir(path, recursive=recursive))

    def delete_dir(self, path):
        self._call("delete", path, lambda: self.fs.delete_dir(path))

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._call("delete", path, lambda: self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok))

    def delete_root_dir_contents(self):
        self._call("delete", "/", lambda: self.fs.delete_dir_contents("/", accept_root_dir=True))

    def delete_file(self, path):
        self._call("delete", path, lambda: self.fs.delete_file(path))

    def move(self, src, dest):
        self._call("move", src, lambda: self.fs.move(src, dest))

    def copy_file(self, src, dest):
        self._call("copy", src, lambda: self.fs.copy_file(src, dest))

    def open_input_stream(self, path):
        return self._call("read", path, lambda: self.fs.open_input_stream(path))

    def open_input_file(self, path):
        return self._call("read", path, lambda: self.fs.open_input_file(path))

    def open_output_stream(self, path, metadata):
        import pyarrow as pa

        return pa.PythonFile(_SpooledUpload(self, path, metadata), mode="w")

    def open_append_stream(self, path, metadata):
        raise NotImplementedError(f"{self.base_uri}: object stores cannot append to {path}")


class _SpooledUpload:
    """A writable file that uploads what was written, with retries, when it is closed."""

    def __init__(self, handler: RetryingHandler, path: str, metadata):
        self._handler, self._path, self._metadata = handler, path, metadata
        self._spool = tempfile.SpooledTemporaryFile(max_size=16 << 20)
        self.closed = False

    def write(self, data) -> int:
        return self._spool.write(data)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._spool.tell()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True

        def upload() -> None:
            self._spool.seek(0)
            with self._handler.writer.open_output_stream(self._path, metadata=self._metadata) as out:
                while chunk := self._spool.read(_CHUNK_BYTES):
                    out.write(chunk)

        try:
            self._handler._call("write", self._path, upload)
        finally:
            self._spool.close()


def read_bytes(uri: str | os.PathLike) -> bytes:
    """Reads a whole file.

    Raises:
        FileNotFoundError: the file does not exist (the message names the URI).
    """
    filesystem, path = _resolve(uri)

    def read() -> bytes:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()

    try:
        return retrying("read", uri, read) if is_remote(uri) else read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{redact(uri)}: no such file") from None
    except OSError as err:
        if _is_missing(err):
            raise FileNotFoundError(f"{redact(uri)}: no such file ({err})") from None
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

    def write() -> None:
        with filesystem.open_output_stream(path) as stream:
            stream.write(data)

    retrying("write", uri, write)


def exists(uri: str | os.PathLike) -> bool:
    """True when a file or folder exists at `uri`."""
    filesystem, path = _resolve(uri)
    info = retrying("look up", uri, lambda: filesystem.get_file_info(path))
    return info.type != pafs.FileType.NotFound


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


def upload_dir(local_dir: str | os.PathLike, uri: str, *, num_threads: int = 8) -> tuple[int, int]:
    """Copies every file under `local_dir` to the same relative path under `uri`; rewrites nothing.

    Hidden files and folders (names starting with `.`) are skipped. Each file is retried on its own.

    Returns:
        (number of files, number of bytes) uploaded.

    Raises:
        FileNotFoundError: `local_dir` is not a folder, or the bucket does not exist.
    """
    source = Path(local_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a folder; give the dataset folder (with manifest.parquet)")
    if is_remote(uri):
        parts = urlsplit(uri)
        bucket_uri = f"{parts.scheme}://{parts.netloc}" + (f"?{parts.query}" if parts.query else "")
        if not exists(bucket_uri):
            raise FileNotFoundError(f"bucket {redact(bucket_uri)} does not exist or is not visible with these "
                                    "credentials; create it first (e.g. `aws s3 mb`)")
    files = []
    for folder, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / n for n in sorted(names) if not n.startswith(".")]

    def upload(path: Path) -> int:
        target = join(uri, path.relative_to(source).as_posix())
        if not is_remote(target):
            dest = Path(_local_path(target))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            return path.stat().st_size
        filesystem, remote_path = _resolve(target)

        def put() -> None:
            with open(path, "rb") as src, filesystem.open_output_stream(remote_path) as dst:
                shutil.copyfileobj(src, dst, _CHUNK_BYTES)

        retrying("upload to", target, put)
        return path.stat().st_size

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        sizes = list(pool.map(upload, files))
    return len(files), sum(sizes)


# --- read-through cache ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _s3_client(pid: int, endpoint: str | None, access_key: str | None, secret_key: str | None):
    # Keyed by pid: boto3 clients must not cross a fork (DataLoader workers fork).
    del pid
    import boto3
    from botocore.config import Config

    kwargs = {"endpoint_url": endpoint} if endpoint else {}
    if access_key:
        kwargs.update(aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    return boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 3}), **kwargs)


def _s3_target(uri: str):
    """(boto3 client, bucket, key) for an `s3://` URI; honours credentials/endpoint given in the URI."""
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query))
    endpoint = None
    if query.get("endpoint_override"):
        override = query["endpoint_override"]
        endpoint = override if "://" in override else f"{query.get('scheme', 'https')}://{override}"
    access = secret = None
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        access, _, secret = userinfo.partition(":")
    client = _s3_client(os.getpid(), endpoint, access, secret or None)
    return client, parts.netloc.rsplit("@", 1)[-1], parts.path.lstrip("/")


_versions: dict[str, tuple[str, int, float]] = {}  # uri -> (ETag, size in bytes, looked up at)
_versions_lock = threading.Lock()


def _missing_error(uri: str, err: Exception | None = None) -> FileNotFoundError:
    detail = f" ({err})" if err else ""
    return FileNotFoundError(f"{redact(uri)}: no such object{detail}")


def object_version(uri: str, *, refresh: bool = False) -> str:
    """The ETag of an `s3://` object (size + mtime for other remote schemes); looked up at most every 10 min.

    Raises:
        FileNotFoundError: the object does not exist (the message names the URI).
    """
    now = time.monotonic()
    with _versions_lock:
        cached = _versions.get(uri)
    if cached and not refresh and now - cached[2] < _VERSION_TTL_S:
        return cached[0]
    if urlsplit(uri).scheme == "s3":
        from botocore.exceptions import ClientError

        client, bucket, key = _s3_target(uri)
        try:
            head = retrying("look up", uri, lambda: client.head_object(Bucket=bucket, Key=key))
        except ClientError as err:
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NoSuchBucket"):
                raise _missing_error(uri) from None
            if status == 403:
                raise PermissionError(
                    f"{redact(uri)}: access denied (S3 answers 403 also for a missing object when the credentials "
                    "may not list the bucket); check the object and the credentials' read permission"
                ) from None
            raise
        version, size = head["ETag"].strip('"'), int(head.get("ContentLength") or 0)
    else:
        filesystem, path = _resolve(uri)
        info = retrying("look up", uri, lambda: filesystem.get_file_info(path))
        if info.type == pafs.FileType.NotFound:
            raise _missing_error(uri)
        version, size = f"{info.size}-{info.mtime_ns}", int(info.size)
    with _versions_lock:
        if len(_versions) > 100_000:
            _versions.clear()
        _versions[uri] = (version, size, now)
    return version


class _ChangedWhileReading(Exception):
    pass


def _download(uri: str, version: str, out) -> None:
    if urlsplit(uri).scheme == "s3":
        from botocore.exceptions import ClientError

        client, bucket, key = _s3_target(uri)
        try:
            # IfMatch: the bytes cached under this ETag are the bytes of this ETag.
            body = client.get_object(Bucket=bucket, Key=key, IfMatch=version)["Body"]
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412"):
                raise _ChangedWhileReading() from None
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise _missing_error(uri) from None
            raise
        with body:
            shutil.copyfileobj(body, out, _CHUNK_BYTES)
        return
    filesystem, path = _resolve(uri)
    with filesystem.open_input_stream(path) as stream:
        shutil.copyfileobj(stream, out, _CHUNK_BYTES)


def cache_max_bytes() -> int:
    """The video cache's size limit: `ACTIONLAB_CACHE_MAX_GB` (default 20 GB)."""
    return int(float(os.environ.get(CACHE_MAX_GB_ENV) or _DEFAULT_CACHE_MAX_GB) * 1e9)


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


class CacheFullError(OSError):
    """The disk under the video cache has no room for a video, even after evicting every cached one."""


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
        return _local_path(uri)
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
                continue  # replaced between the ETag lookup and the read: look it up again
            except (FileNotFoundError, CacheFullError):
                raise
            except OSError as err:
                if _is_missing(err):
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
