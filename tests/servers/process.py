"""Processes the test servers are made of: starting one in its own session, waiting for it, stopping
it by PID (its process group), an environment cleared of outside servers, and finding what a command
left behind. Servers are started only inside the private network + PID namespace of scripts/test.sh
(ACTIONLAB_TEST_NETNS=1); `needs_netns` skips a test elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NETNS = bool(os.environ.get("ACTIONLAB_TEST_NETNS"))
needs_netns = pytest.mark.skipif(
    not NETNS,
    reason="starts servers: run through scripts/test.sh (as root) so they are confined to a private network namespace",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


@dataclass
class Process:
    """A server process started in its own session, stopped with its whole process group."""

    proc: subprocess.Popen
    log_path: Path

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def wait_until(self, predicate, *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what}: process exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not ready after {timeout:.0f}s:\n{self.log()}")
            time.sleep(0.5)

    def stop(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


def start_process(argv: list[str], *, env: dict, log_path: Path, cwd: Path | None = None) -> Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    log.close()
    return Process(proc, log_path)


def base_env(**extra: str) -> dict:
    """The test process's environment, minus anything pointing at servers outside the test."""
    env = dict(os.environ)
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(key, None)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.update(RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    env.update(extra)
    return env


def pids_with_env(key: str, value: str) -> list[int]:
    """Live processes (not this one, zombies excluded) whose environment holds `key=value`.

    A marker variable in a command's environment is inherited by everything it starts, Ray's raylet,
    GCS, workers and their children included, whose command lines Ray rewrites (`ray::IDLE`).
    """
    needle, pids = f"{key}={value}".encode(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


MARKER_ENV = "ACTIONLAB_TEST_PROCESS"  # put in a command's environment to find everything it started


def reap_marked(value: str, *, settle_s: float = 30.0) -> list[int]:
    """Waits up to `settle_s` for the processes marked `MARKER_ENV=value` to exit, SIGKILLs the rest by
    PID and returns those. Ray's workers and actors run in process groups of their own, so killing a
    driver's group leaves them running (found in 2.60: Train workers and the controller went on after
    the driver, GCS and raylet were gone)."""
    deadline = time.monotonic() + settle_s
    while pids_with_env(MARKER_ENV, value) and time.monotonic() < deadline:
        time.sleep(1)
    left = pids_with_env(MARKER_ENV, value)
    for _ in range(3):
        kill_pids(pids_with_env(MARKER_ENV, value))
        time.sleep(0.5)
    return left


def kill_driver(driver, marker: str) -> list[int]:
    """SIGKILLs a driver's process group (if it still runs) and reaps what its Ray left behind, which
    would otherwise train on beside a rerun (`reap_marked`); returns the PIDs that had to be killed."""
    if driver.poll() is None:
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(30)
    return reap_marked(marker)


def artifacts_dir() -> Path:
    """Where tests keep files for people to look at (screenshots): $ACTIONLAB_TEST_ARTIFACTS or build/."""
    path = Path(os.environ.get("ACTIONLAB_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def actionlab(env: dict, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `python -m actionlab ARGS` as a user would; `check` fails the test (with the output's tail)
    when it exits non-zero."""
    proc = subprocess.run([sys.executable, "-m", "actionlab", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"actionlab {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def last_json(stdout: str):
    """The last line of a command's output that is a JSON object or list (`--json` prints one)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            return json.loads(line)
    raise AssertionError(f"no JSON line in output:\n{stdout[-3000:]}")


def registered_checkpoint(run_dir: Path) -> str:
    """The checkpoint Ray Train's controller resumes from (its snapshot in the run's storage), or ''."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return ""
    return ((snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")) or ""
