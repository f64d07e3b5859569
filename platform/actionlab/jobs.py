"""Submit actionlab commands to a Ray cluster through Ray's Jobs SDK, with `platform/runtime_env.yaml`.

`actionlab submit -- train RECIPE ...` is `ray job submit --runtime-env platform/runtime_env.yaml --
python -m actionlab train RECIPE ...` made independent of the current directory: the runtime env's
paths are resolved against this checkout. A few non-secret variables the job needs are forwarded
(the MLflow tracking URI, the S3 endpoint and region); credentials are refused, since a job's runtime
env is readable by anyone who can open the Ray dashboard.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import shlex
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import storage

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
FORWARDED_ENV = (
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "ACTIONLAB_DECODER",
    "ACTIONLAB_CACHE_MAX_GB",
    "ACTIONLAB_S3_MAX_ATTEMPTS",
)
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def repo_root() -> Path:
    """The checkout that holds `platform/runtime_env.yaml` (the working dir a job ships)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "platform" / "runtime_env.yaml").is_file():
        raise FileNotFoundError(
            f"no platform/runtime_env.yaml above {Path(__file__).resolve().parent}: `actionlab submit` ships the "
            "source checkout; run it from an editable install (`pip install -e .`) of the repository"
        )
    return root


def runtime_env(path: str | os.PathLike | None = None, *, env: dict | None = None) -> dict:
    """The job's runtime env: the YAML file with absolute paths, plus forwarded and given env vars.

    Args:
        path: runtime env YAML (default `platform/runtime_env.yaml` of this checkout); relative paths
            inside it are taken from the repository root.
        env: extra environment variables for the job (`--env KEY=VALUE`).

    Raises:
        ValueError: a variable that looks like a credential was given.
    """
    import yaml

    root = repo_root()
    file = Path(path) if path else root / "platform" / "runtime_env.yaml"
    spec = yaml.safe_load(file.read_text()) or {}
    if "working_dir" in spec and not storage.is_remote(spec["working_dir"]):
        spec["working_dir"] = str((root / spec["working_dir"]).resolve())
    spec["py_modules"] = [m if storage.is_remote(m) else str((root / m).resolve()) for m in spec.get("py_modules", [])]
    env_vars = dict(spec.get("env_vars") or {})
    for key in FORWARDED_ENV:
        value = os.environ.get(key)
        if not value or key in env_vars:
            continue
        if storage.redact(value) != value:
            print(f"actionlab: not forwarding {key}: it contains credentials; set it on the cluster instead",
                  file=sys.stderr)
            continue
        env_vars[key] = value
    for key, value in (env or {}).items():
        if _SECRET_NAME.search(key) or storage.redact(value) != value:
            raise ValueError(
                f"--env {key}=...: looks like a credential; a job's runtime env is shown in the Ray dashboard. "
                "Give the cluster's nodes their credentials (instance profile, or the environment of `ray start`)"
            )
        env_vars[key] = value
    if env_vars:
        spec["env_vars"] = env_vars
    return spec


def entrypoint(command: list[str]) -> str:
    """`python -m actionlab COMMAND ...`, quoted for the job's shell."""
    if not command:
        raise ValueError("nothing to submit: give the actionlab command after `--`, e.g. "
                         "`actionlab submit -- train smoke --set data.manifest=s3://bucket/data/manifest.parquet`")
    if command[0] in ("python", "actionlab") or command[0].endswith("python3"):
        raise ValueError(f"give the actionlab subcommand after `--` (`-- train RECIPE`), not {command[0]!r}")
    return shlex.join(["python", "-m", "actionlab", *command])


def resolve_address(address: str | None) -> str:
    """`--address`, else `RAY_API_SERVER_ADDRESS` / an http `RAY_ADDRESS`, else the local dashboard."""
    if address:
        return address
    for key in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(key, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


@dataclass(frozen=True)
class Submitted:
    job_id: str
    address: str
    entrypoint: str
    env_keys: tuple[str, ...]


def client(address: str | None = None):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(resolve_address(address))
    except ConnectionError as err:
        raise RuntimeError(
            f"cannot reach the Ray dashboard at {resolve_address(address)}: {err}. Give --address http://HEAD:8265 "
            "(the dashboard port, not the GCS port 6379)"
        ) from None


def submit(
    command: list[str],
    *,
    address: str | None = None,
    runtime_env_file: str | None = None,
    env: dict | None = None,
    submission_id: str | None = None,
    num_gpus: float | None = None,
) -> Submitted:
    """Submits `python -m actionlab COMMAND ...` as a Ray job and returns its id.

    Raises:
        RuntimeError: the cluster cannot be reached.
    """
    spec = runtime_env(runtime_env_file, env=env)
    job_id = submission_id or f"actionlab-{command[0] if command else 'job'}-{time.strftime('%Y%m%d-%H%M%S')}-" \
                              f"{uuid.uuid4().hex[:6]}"
    text = entrypoint(command)
    c = client(address)
    kwargs = {"entrypoint_num_gpus": num_gpus} if num_gpus else {}
    c.submit_job(
        entrypoint=text,
        submission_id=job_id,
        runtime_env=spec,
        metadata={"actionlab.command": command[0], "submitted_by": getpass.getuser()},
        **kwargs,
    )
    return Submitted(job_id=job_id, address=resolve_address(address), entrypoint=text,
                     env_keys=tuple(sorted(spec.get("env_vars", {}))))


def status(job_id: str, *, address: str | None = None) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    return str(client(address).get_job_status(job_id).value)


def follow(job_id: str, *, address: str | None = None, out=None) -> str:
    """Streams the job's logs until it ends; returns its final status."""
    out = out or sys.stdout
    c = client(address)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    # The log stream closes as the job ends; the status can lag it by a moment.
    deadline = time.monotonic() + 60
    while True:
        state = str(c.get_job_status(job_id).value)
        if state in _TERMINAL or time.monotonic() > deadline:
            return state
        time.sleep(1)


def failure_message(job_id: str, *, address: str | None = None) -> str:
    info = client(address).get_job_info(job_id)
    return str(info.message or "")
