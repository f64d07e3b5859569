"""Storage URIs as text: local paths, `file://` and remote schemes (`s3://bucket/key`), and their secrets.

The one parser of this package: everything that splits a URI into the part that configures a
filesystem and the path inside it goes through `split_remote`. `redact` / `redact_text` keep
`user:password@` and secret query parameters out of logs, MLflow and printed config.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_QUERY_KEYS = {"access_key", "secret_key", "session_token", "password", "token", "x-amz-security-token",
                      "x-amz-signature", "x-amz-credential"}
_USERINFO_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET_QUERY_IN_TEXT = re.compile(r"([?&](?:access_key|secret_key|session_token|password|token)=)[^&\s'\"]+", re.IGNORECASE)


def is_remote(uri: str | os.PathLike) -> bool:
    """True for URIs with a scheme other than `file://` (e.g. `s3://bucket/key`)."""
    text = os.fspath(uri)
    return "://" in text and not text.startswith("file://")


def local_path(uri: str | os.PathLike) -> str:
    """The path of a local path or `file://` URI."""
    text = os.fspath(uri)
    if text.startswith("file://"):
        return urlsplit(text).path
    return text


def split_remote(uri: str | os.PathLike) -> tuple[str, str]:
    """A remote URI as (the URI that configures its filesystem, the path inside that filesystem).

    `s3://KEY:SECRET@bkt/a/b?endpoint_override=h:9000` gives (`s3://KEY:SECRET@bkt?endpoint_override=h:9000`,
    `bkt/a/b`): the credentials and the query configure the filesystem, as in Ray's and pyarrow's
    docs; the first part is also the bucket's own URI.
    """
    parts = urlsplit(os.fspath(uri))
    base = f"{parts.scheme}://{parts.netloc}" + (f"?{parts.query}" if parts.query else "")
    bucket = parts.netloc.rsplit("@", 1)[-1]
    return base, f"{bucket}{parts.path}".rstrip("/")


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


def redact_text(text: str) -> str:
    """`text` (a YAML dump, an error message) with every URI's credentials replaced by `***`."""
    return _SECRET_QUERY_IN_TEXT.sub(r"\1***", _USERINFO_IN_TEXT.sub(r"\1***@", text))
