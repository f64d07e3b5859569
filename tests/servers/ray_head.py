"""Ray clusters for the tests: `ray start --head` on 127.0.0.1, one per test session for the tests that
run Ray (`ray_address`: the CLI subprocesses and in-process drivers join it through `RAY_ADDRESS`
instead of starting a local instance each), and `start_ray_head` for tests that need a cluster of
their own (one they kill, or whose environment is what they test).

A head counts as started when the State API lists its node alive, not when its dashboard answers (it
does before the raylet registers); one that did not come up is started again. The shared head is
checked before each test that uses it and replaced when a test left it broken or busy, so one bad test
fails alone instead of every later one; a failing test's report carries the head's state and logs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from servers.process import NETNS, Process, base_env, free_port, http_ok, start_process
from servers.s3 import credentials_env

STARTUP_TIMEOUT = "timed out during startup"  # Ray's message when a raylet misses its fixed 30 s to register
START_ATTEMPTS = 3
START_TIMEOUT_S = 240
HEALTH_PATIENCE_S = 30  # how long the shared head may look unhealthy before it is replaced
# Each node started in a session gets its own block of worker ports: nodes share 127.0.0.1, and Ray's
# default range (10002-19999) would be handed out twice. Below the kernel's ephemeral range, where
# free_port() lands.
_PORT_BLOCKS = itertools.count()
_PORTS_PER_NODE = 200


def worker_ports() -> list[str]:
    """`ray start` arguments: a block of worker ports no other node of this test session uses."""
    first = 20000 + next(_PORT_BLOCKS) * _PORTS_PER_NODE
    if first + _PORTS_PER_NODE > 32000:
        raise RuntimeError("too many test nodes in one session: no worker port block left below 32000")
    return ["--min-worker-port", str(first), "--max-worker-port", str(first + _PORTS_PER_NODE - 1)]


@dataclass
class RayHead:
    dashboard_url: str
    gcs_address: str
    temp_dir: Path
    process: Process

    def head_node_alive(self) -> bool:
        """Whether the State API answers and lists this head's node (its raylet) alive."""
        from ray.util.state import list_nodes

        if not http_ok(f"{self.dashboard_url}/api/version"):
            return False
        try:
            nodes = list_nodes(address=self.dashboard_url, limit=10000, raise_on_missing_output=False, timeout=10)
        except Exception:  # noqa: BLE001 - busy or half started: not alive yet
            return False
        return any(n.is_head_node and n.state == "ALIVE" for n in nodes)

    def healthy(self, patience: float = 0) -> bool:
        """`ray start` running and the head node alive, within `patience` seconds (a busy head's State
        API may miss one answer)."""
        try:
            self.process.wait_until(self.head_node_alive, timeout=patience, what="ray head (node alive)")
        except (RuntimeError, TimeoutError):
            return False
        return True

    def report(self, lines: int = 30) -> str:
        """The head's state and the tails of its logs (`ray start`, raylet, GCS): what a failing test shows."""
        state = (f"`ray start` exited ({self.process.proc.returncode})" if self.process.proc.poll() is not None
                 else f"`ray start` running, head node {'alive' if self.head_node_alive() else 'NOT alive'}")
        parts = [f"Ray head {self.gcs_address} (temp dir {self.temp_dir}): {state}",
                 _tail("ray start", self.process.log_path, lines)]
        sessions = [p for p in sorted(self.temp_dir.glob("session_*")) if not p.is_symlink()]  # not session_latest
        for pattern in ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err", "dashboard*.log"):
            for path in (path for session in sessions for path in sorted(session.glob(f"logs/{pattern}"))):
                parts.append(_tail(path.name, path, lines))
        return "\n".join(parts)

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


def _tail(title: str, path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as err:
        return f"--- {title}: {err}"
    return "\n".join([f"--- {title} ({path}), last {len(text)} lines:", *text])


def start_ray_head(*, env: dict, log_dir: Path, num_cpus: float | None = 4, extra: list[str] = ()) -> RayHead:
    """`ray start --head --block` on 127.0.0.1, every port a free one, its temp dir under `log_dir`;
    returns once the State API lists the head node alive.

    A head that did not get there (its raylet missed Ray's fixed 30 s to register, "timed out during
    startup", seen on a 2-core machine under load: the dashboard answers, the cluster has no node) is
    stopped and started again on fresh ports, twice at most. `num_cpus=None` lets Ray count the CPUs, as
    a local instance (`ray.init()`) does; `extra` are more `ray start` arguments (node name, resources,
    labels).
    """
    for attempt in range(START_ATTEMPTS):
        head = _start_head(env=env, log_dir=log_dir if attempt == 0 else log_dir / f"retry{attempt}",
                           num_cpus=num_cpus, extra=extra)
        try:
            head.process.wait_until(head.head_node_alive, timeout=START_TIMEOUT_S, what="ray head (node alive)")
            return head
        except (RuntimeError, TimeoutError) as err:
            report = head.report(lines=12)
            head.stop()
            if attempt == START_ATTEMPTS - 1:
                raise RuntimeError(f"the Ray head did not start in {START_ATTEMPTS} attempts: {err}\n{report}") from None
            warnings.warn(f"the Ray head did not start ({str(err).splitlines()[0]}); starting it again.\n{report}",
                          stacklevel=2)
    raise AssertionError("unreachable")


def _start_head(*, env: dict, log_dir: Path, num_cpus: float | None, extra: list[str]) -> RayHead:
    temp_dir = _temp_dir(log_dir)
    gcs_port, dashboard_port = free_port(), free_port()
    ray = str(Path(sys.executable).parent / "ray")
    argv = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--include-dashboard", "true",
            "--ray-client-server-port", str(free_port()), "--temp-dir", str(temp_dir), "--disable-usage-stats",
            # Not Ray's fixed defaults (52365, ...): the session's shared head holds those while a test runs a
            # cluster of its own, whose job agent would then fail to bind ("No available agent to submit job").
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()), *worker_ports()]
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
    return RayHead(dashboard_url=url, gcs_address=f"127.0.0.1:{gcs_port}", temp_dir=temp_dir, process=process)


class SharedHead:
    """The session's head, started when first asked for, and again when a test left it broken or busy."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.head: RayHead | None = None
        self.starts = 0

    def get(self) -> RayHead:
        if self.head is not None and not self.head.healthy(patience=HEALTH_PATIENCE_S):
            warnings.warn(f"the shared Ray head is broken; starting a new one. {self.head.report(lines=10)}",
                          stacklevel=2)
            self.discard()
        if self.head is None:
            self.starts += 1
            self.head = start_ray_head(env=self.env, log_dir=self.root / f"head{self.starts}", num_cpus=None)
        return self.head

    def discard(self) -> None:
        """Stops the head; the next `get` starts a new one."""
        if self.head is not None:
            left, self.head = self.head.stop(), None
            assert not left, f"Ray processes left after stopping the session's head: {left}"


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """The session's Ray cluster (a `SharedHead`): one head node, as many CPUs as a local instance would have.

    Its environment is a node's: the test S3 credentials (a job's workers get the endpoint, tracking
    URI and state folder from the driver's runtime env, never credentials), RAY_AUTH_MODE set
    explicitly. Stopped by PID at the end of the session; nothing of it may be left.
    """
    if not NETNS:
        pytest.skip("starts Ray: run through scripts/test.sh (as root) so Ray is confined to a private network "
                    "namespace")
    root = tmp_path_factory.mktemp("ray-head")
    env = base_env(ACTIONLAB_HOME=str(root / "home"), RAY_AUTH_MODE="disabled", **credentials_env(root / "aws"))
    shared = SharedHead(root, env)
    try:
        yield shared
    finally:
        shared.discard()


@pytest.fixture
def ray_address(ray_head, monkeypatch) -> str:
    """`RAY_ADDRESS` of the session's cluster, also set in this process for in-process drivers; give it
    to the CLI subprocesses (`base_env` drops it). After the test, the cluster must be idle again; a
    test that left work on it fails, and the next one gets a new head, not a smaller one."""
    head = ray_head.get()
    monkeypatch.setenv("RAY_ADDRESS", head.gcs_address)
    yield head.gcs_address
    try:
        head.wait_idle()
    except AssertionError as err:
        report = head.report()  # before its logs go with it
        ray_head.discard()
        raise AssertionError(f"{err}\n{report}") from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that ran on the shared head reports the head's state and log tails."""
    report = yield
    shared = item.funcargs.get("ray_head") if "ray_address" in getattr(item, "fixturenames", ()) else None
    deadline = call.excinfo is not None and type(call.excinfo.value).__name__ == "DeadlineReached"
    if report.failed and not deadline and isinstance(shared, SharedHead) and shared.head is not None:
        try:
            report.sections.append(("shared Ray head", shared.head.report()))
        except Exception as err:  # noqa: BLE001 - the report must not fail the report
            report.sections.append(("shared Ray head", f"no report: {err!r}"))
    return report
