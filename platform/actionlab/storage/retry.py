"""The filesystems behind remote URIs, and the one retry layer of every remote operation.

`retrying` retries transient errors (connection drops, throttling, 5xx) with capped exponential
backoff; callers wrap whole operations in it (a read, a download), so a connection that drops midway
is retried from the start. `ray_storage` gives Ray Train a filesystem whose every call is retried the
same way (`RetryingHandler`), since Ray's controller and workers write through it on their own.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import tempfile
import time

import pyarrow.fs as pafs

from .uris import is_remote, local_path, redact, split_remote

log = logging.getLogger(__name__)

MAX_ATTEMPTS_ENV = "ACTIONLAB_S3_MAX_ATTEMPTS"  # total tries of one remote operation (default 8)
# 8 tries with backoff doubling from 0.5 s up to 8 s wait 16-31 s in all: a storage endpoint that goes
# away for a few seconds (a restart, a failover) costs a pause, not a sample or a worker-group restart.
_DEFAULT_MAX_ATTEMPTS = 8
_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 8.0
_CHUNK_BYTES = 1 << 20

# Substrings of pyarrow / AWS SDK messages for errors worth another try.
_TRANSIENT = re.compile(
    r"NETWORK_CONNECTION|curlCode|SLOW_?DOWN|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|REQUEST_?TIME_?OUT|THROTTL"
    r"|HTTP (response code: |status )(5\d\d|429)|Connection (reset|refused|aborted)|timed out|Broken pipe|temporarily",
    re.IGNORECASE,
)


class RetriesExhausted(OSError):
    """A remote operation still failed with transient errors after the last attempt: the store is
    unreachable, which says nothing about the object (callers must not count it as a bad file)."""


def is_transient(err: BaseException) -> bool:
    """True for errors that another try may fix: connection drops, throttling, server-side 5xx."""
    if isinstance(err, FileNotFoundError | PermissionError | RetriesExhausted):
        return False  # an exhausted retry is not retried again by an enclosing one
    return isinstance(err, OSError) and bool(_TRANSIENT.search(str(err)))


def is_missing(err: OSError) -> bool:
    """True for errors whose message says the object does not exist."""
    text = str(err).lower()
    return "not found" in text or "does not exist" in text or "nosuchkey" in text or "no such" in text


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


# --- filesystems --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _remote_filesystem(base_uri: str, endpoint: str | None, pid: int) -> pafs.FileSystem:
    # One filesystem per bucket (and endpoint): `from_uri` resolves the bucket region with a request.
    # Per process: a forked DataLoader worker must not share its parent's pooled connections. (Creating
    # one in a child forked while another thread of the parent is inside an S3 call hangs, pyarrow 25.)
    del endpoint, pid  # part of the cache key only: pyarrow reads AWS_ENDPOINT_URL itself
    filesystem, _ = pafs.FileSystem.from_uri(base_uri)
    return filesystem


def _connect(base_uri: str) -> pafs.FileSystem:
    return retrying("connect to", base_uri,
                    lambda: _remote_filesystem(base_uri, os.environ.get("AWS_ENDPOINT_URL"), os.getpid()))


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for any supported URI.

    Connecting is retried; calls on the remote filesystem are not (wrap them in `retrying`).
    """
    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    base, path = split_remote(uri)
    return _connect(base), path


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """`storage_path` and `storage_filesystem` for a Ray `RunConfig` (or `Tuner.restore`) rooted at `uri`.

    A remote root gets a filesystem whose every call is retried like the rest of this package: Ray's
    controller writes its checkpoint snapshot with one bare call, and a storage endpoint away for a few
    seconds at that moment failed the whole run (a controller error, which no restart covers). Local
    roots are left to Ray.
    """
    if not is_remote(uri):
        return uri, None
    base, path = split_remote(uri)
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
            self._fs = _connect(self.base_uri)
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
