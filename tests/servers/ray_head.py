"""Ray clusters for the tests: `ray start --head` on 127.0.0.1, one per test session for the tests that
run Ray (`ray_address`: the CLI subprocesses and in-process drivers join it through `RAY_ADDRESS`
instead of starting a local instance each), and `start_ray_head` for tests that need a cluster of
their own (one they kill, or whose environment is what they test).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers.process import NETNS, Process, base_env, free_port, http_ok, start_process
from servers.s3 import credentials_env


@dataclass
class RayHead:
    dashboard_url: str
    gcs_address: str
    temp_dir: Path
    process: Process

    def leftover_pids(self) -> list[int]:
        """Live processes whose command line names this cluster's temp dir (zombies excluded)."""
        marker, pids = str(self.temp_dir), []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def busy(self) -> list[str]:
        """What holds or waits for resources on the cluster (State API over the dashboard), one line each:
        live actors that need any, and placement groups not removed. Ray's own detached bookkeeping actors
        (Train's state actor, Ray Data's stats actor, ...) need none and stay between jobs; a `node:...`
        resource only pins an actor to a node (Train's PlacementGroupCleaner asks 0.001 of the head's) and
        takes no capacity from the next test."""
        from ray.util.state import list_actors, list_placement_groups

        actors = list_actors(address=self.dashboard_url, filters=[("state", "!=", "DEAD")], detail=True, limit=1000)
        groups = list_placement_groups(address=self.dashboard_url, filters=[("state", "!=", "REMOVED")], limit=1000)
        return ([f"actor {a.class_name} ({a.state}, job {a.job_id}, needs {a.required_resources})" for a in actors
                 if any(v > 0 for k, v in (a.required_resources or {}).items() if not k.startswith("node:"))]
                + [f"placement group {g.name or g.placement_group_id} ({g.state}, job {g.creator_job_id})"
                   for g in groups])

    def wait_idle(self, timeout: float = 60) -> None:
        """Waits until the jobs that ran are gone from the cluster (Ray removes a finished driver's actors
        and placement groups asynchronously); raises, naming what is left, when they stay."""
        deadline = time.monotonic() + timeout
        while left := self.busy():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the test left work on the shared Ray head {self.gcs_address} after {timeout:.0f}s: {left}; "
                    "the next test would get a smaller cluster. End it in the test, or give the test a cluster "
                    "of its own (start_ray_head)")
            time.sleep(0.5)

    def stop(self) -> list[int]:
        """Stops the cluster; returns the PIDs still alive afterwards (none expected)."""
        self.process.stop()
        # Raylet workers and dashboard agents may have left the process group; inside the PID namespace
        # everything whose command line names this cluster's temp dir is ours.
        for _ in range(3):
            pids = self.leftover_pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return self.leftover_pids()


def _temp_dir(under: Path) -> Path:
    """A temp dir for Ray under `under` if Ray's unix socket paths stay below their 108-byte limit there
    (it adds about 64 bytes: session_<date>_<pid>/sockets/plasma_store), else a short one in /tmp."""
    candidate = under / "t"
    if len(str(candidate)) + 64 < 108:
        candidate.mkdir(parents=True)
        return candidate
    return Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))


def start_ray_head(*, env: dict, log_dir: Path, num_cpus: float | None = 4, extra: list[str] = ()) -> RayHead:
    """`ray start --head --block` on 127.0.0.1, every port a free one, its temp dir under `log_dir`.

    `num_cpus=None` lets Ray count the CPUs, as a local instance (`ray.init()`) does; `extra` are more
    `ray start` arguments (node name, resources, labels, worker ports).
    """
    temp_dir = _temp_dir(log_dir)
    gcs_port, dashboard_port = free_port(), free_port()
    ray = str(Path(sys.executable).parent / "ray")
    argv = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--include-dashboard", "true",
            "--ray-client-server-port", str(free_port()), "--temp-dir", str(temp_dir), "--disable-usage-stats",
            # Not Ray's fixed defaults (52365, ...): the session's shared head holds those while a test runs a
            # cluster of its own, whose job agent would then fail to bind ("No available agent to submit job").
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
    if num_cpus is not None:
        argv += ["--num-cpus", f"{num_cpus:g}"]
    argv += list(extra)
    # No draining on SIGTERM (30 s by default): nothing is served from a test cluster when it stops.
    # RAY_ADDRESS: its workers inherit it. Ray Train's PlacementGroupCleaner looks the cluster up by
    # address "auto", which fails when the session's head and a test's own cluster both run here; a
    # lost controller's placement group then stays and holds the CPU its rerun needs.
    env = {**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"}
    process = start_process(argv, env=env, log_path=log_dir / "ray-head.log")
    url = f"http://127.0.0.1:{dashboard_port}"
    head = RayHead(dashboard_url=url, gcs_address=f"127.0.0.1:{gcs_port}", temp_dir=temp_dir, process=process)
    try:
        process.wait_until(lambda: http_ok(f"{url}/api/version"), timeout=240, what="ray head (dashboard)")
    except BaseException:
        head.stop()
        raise
    return head


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """The session's Ray cluster: one head node, as many CPUs as a local instance would have.

    Its environment is a node's: the test S3 credentials (a job's workers get the endpoint, tracking
    URI and state folder from the driver's runtime env, never credentials), RAY_AUTH_MODE set
    explicitly. Stopped by PID at the end of the session; nothing of it may be left.
    """
    if not NETNS:
        pytest.skip("starts Ray: run through scripts/test.sh (as root) so Ray is confined to a private network "
                    "namespace")
    root = tmp_path_factory.mktemp("ray-head")
    env = base_env(ACTIONLAB_HOME=str(root / "home"), RAY_AUTH_MODE="disabled", **credentials_env(root / "aws"))
    head = start_ray_head(env=env, log_dir=root, num_cpus=None)
    try:
        yield head
    finally:
        left = head.stop()
    assert not left, f"Ray processes left after stopping the session's head: {left}"


@pytest.fixture
def ray_address(ray_head, monkeypatch) -> str:
    """`RAY_ADDRESS` of the session's cluster, also set in this process for in-process drivers; give it
    to the CLI subprocesses (`base_env` drops it). After the test, the cluster must be idle again."""
    monkeypatch.setenv("RAY_ADDRESS", ray_head.gcs_address)
    yield ray_head.gcs_address
    ray_head.wait_idle()
