"""`actionlab mlflow-server`: an MLflow tracking server with a database store and an S3 or local artifact root.

It runs `mlflow server` in proxied-artifact mode (`--artifacts-destination`): clients log and download
artifacts through the server, so only the server needs S3 credentials (standard AWS chain, endpoint
from `AWS_ENDPOINT_URL`). Clients point `MLFLOW_TRACKING_URI` at `http://HOST:PORT`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from . import storage, tracking


def default_backend_store() -> str:
    return f"sqlite:///{tracking.home() / 'server' / 'mlflow.db'}"


def default_artifacts() -> str:
    return str(tracking.home() / "server" / "artifacts")


def command(
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    backend_store_uri: str = "",
    artifacts_destination: str = "",
    workers: int = 1,
) -> list[str]:
    """The `mlflow server` command line (local folders are created, local paths made absolute)."""
    backend = backend_store_uri or default_backend_store()
    if backend.startswith("sqlite:///"):
        Path(backend[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    artifacts = artifacts_destination or default_artifacts()
    if not storage.is_remote(artifacts):
        local = Path(artifacts.removeprefix("file://")).expanduser().resolve()
        local.mkdir(parents=True, exist_ok=True)
        artifacts = str(local)
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [
        mlflow, "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", artifacts,
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]


def serve(**kwargs) -> None:
    """Replaces this process with the server (so its PID is the server's; stop it with SIGTERM)."""
    argv = command(**kwargs)
    shown = [storage.redact(a) for a in argv]
    print(f"MLflow server on http://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 5000)} "
          f"(export MLFLOW_TRACKING_URI=http://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 5000)})\n"
          f"  {' '.join(shown)}", flush=True)
    # MLflow 3's server-side job runner (GenAI evaluation jobs) is eight more processes that tracking and
    # the registry never use; `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true` turns it back on.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execvp(argv[0], argv)
