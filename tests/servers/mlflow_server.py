"""An MLflow tracking server for the tests: `actionlab mlflow-server` with a SQLite store and its
artifacts proxied to the S3 endpoint of `servers.s3`, one per test session."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from servers.process import Process, base_env, free_port, http_ok, start_process


@dataclass
class MlflowServer:
    url: str
    artifacts: str
    process: Process

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.url, registry_uri=self.url)


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """`actionlab mlflow-server`: SQLite store, artifacts proxied to s3://mlflow-artifacts/root on moto."""
    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts = s3_server.make_bucket("mlflow-artifacts") + "/root"
    port = free_port()
    env = base_env(ACTIONLAB_HOME=str(root / "home"), **s3_server.env)
    argv = [sys.executable, "-m", "actionlab", "mlflow-server", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", artifacts]
    process = start_process(argv, env=env, log_path=root / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_until(lambda: http_ok(f"{url}/health"), timeout=240, what="mlflow server")
        yield MlflowServer(url=url, artifacts=artifacts, process=process)
    finally:
        process.stop()
