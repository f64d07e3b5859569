"""A Ray cluster of several nodes on this machine, each non-head node with a disk of its own.

Modelled on Ray's `ray.cluster_utils.Cluster` (`add_node`, `remove_node`, `wait_for_nodes`), but every
node is a real `ray start` process, and each non-head node runs in its own mount namespace with an
empty tmpfs over the cluster's node-local folder (`local_dir`: the state folder `ACTIONLAB_HOME`, local
datasets, local checkpoints) and over its own Ray temp dir. What one node writes to a local path the
others do not see, as on separate machines: a test that claims a cluster behaviour can then be wrong
the way a real cluster is wrong.

The head is "machine 1", where the test's drivers run: it shares this process's view of the disk. A
node is lost the way a machine is: its raylet is SIGKILLed by PID, then everything the node started
(found by a marker variable every process of the node inherits).

    cluster = start_cluster(env=env, root=tmp_path, head_cpus=1)
    node = cluster.add_node(num_cpus=1, resources={"decode": 1}, labels={"actionlab.io/role": "decode"})
    cluster.wait_for_nodes()
    ... RAY_ADDRESS=cluster.address ...
    cluster.remove_node(node)           # SIGKILL (allow_graceful=True: `ray stop`-like SIGTERM)
    cluster.shutdown()

`ray_cluster` is the integration tier's shared cluster (a head and one worker node, 1 CPU each);
tests add and kill nodes of their own on it and leave it as they found it.
"""

from __future__ import annotations

import itertools
import json
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from servers.process import NETNS, Process, base_env, free_port, kill_pids, pids_with_env, start_process
from servers.ray_head import STARTUP_TIMEOUT, RayHead, start_ray_head, worker_ports
from servers.s3 import credentials_env

NODE_ENV = "ACTIONLAB_TEST_NODE"  # every process a node starts inherits it: how its processes are found
# Nodes on one machine are declared dead within seconds of their raylet dying, not Ray's default ~30 s.
HEALTH_CHECK_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
                    "RAY_health_check_timeout_ms": "2000"}
# A worker's wait for its raylet (Ray's C++ config; `ray start`'s own 30 s wait is fixed, see add_node).
START_WAIT_ENV = {"RAY_raylet_start_wait_time_s": "180"}


def _agent_ports() -> list[str]:
    return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


def _placement_args(num_cpus: float, resources: dict | None, labels: dict | None, name: str) -> list[str]:
    argv = ["--num-cpus", f"{num_cpus:g}", "--node-name", name]
    if resources:
        argv += ["--resources", json.dumps(resources)]
    if labels:
        argv += ["--labels", ",".join(f"{k}={v}" for k, v in labels.items())]
    return argv


@dataclass
class Node:
    """One non-head node: a `ray start --block` in its own mount namespace."""

    name: str
    process: Process
    marker: str  # the value of NODE_ENV in every process of this node
    temp_dir: Path  # the host side of the mount point (empty: the node's files live in its tmpfs)
    num_cpus: float
    resources: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)

    def pids(self) -> list[int]:
        return pids_with_env(NODE_ENV, self.marker)

    def raylet_pid(self) -> int | None:
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                continue
        return None

    def alive(self) -> bool:
        return self.process.proc.poll() is None and self.raylet_pid() is not None

    def sees(self, path: Path) -> Path:
        """`path` as this node's processes see it (its own tmpfs over the node-local folder), through
        `/proc/PID/root` of its `ray start`, which runs in the node's mount namespace."""
        return Path(f"/proc/{self.process.proc.pid}/root") / Path(path).relative_to("/")

    def kill(self) -> None:
        """Loses the node as a machine is lost: SIGKILL its raylet, then every process it started."""
        raylet = self.raylet_pid()
        if raylet is not None:
            kill_pids([raylet])
        for _ in range(5):
            left = self.pids()
            if not left:
                break
            kill_pids(left)
            time.sleep(0.3)
        try:
            self.process.proc.wait(10)
        except Exception:  # noqa: BLE001 - SIGKILLed above; a zombie is reaped by the stop below
            self.process.stop()

    def stop(self) -> None:
        """Takes the node away gracefully: SIGTERM to `ray start --block`, which stops its processes."""
        self.process.stop()
        self.kill()  # whatever did not stop


@dataclass
class Cluster:
    """A head (this machine's disk) plus nodes with disks of their own; see the module docstring."""

    head: RayHead
    env: dict
    root: Path
    local_dir: Path  # node-local on every non-head node: an empty tmpfs there
    nodes: list[Node] = field(default_factory=list)
    _names: itertools.count = field(default_factory=lambda: itertools.count(2))
    _used: set = field(default_factory=set)  # node names ever given (a killed node2's successor is node3)

    @property
    def address(self) -> str:
        """The GCS address, for `RAY_ADDRESS`."""
        return self.head.gcs_address

    @property
    def dashboard_url(self) -> str:
        return self.head.dashboard_url

    def add_node(self, *, num_cpus: float = 1, resources: dict | None = None, labels: dict | None = None,
                 name: str = "", env: dict | None = None, wait: bool = True) -> Node:
        """Starts `ray start --address` in a new mount namespace with an empty tmpfs over `local_dir` and
        over its own Ray temp dir; `wait` waits until the cluster lists it alive.

        A node whose raylet did not register within Ray's fixed 30 s (`node.py`: "timed out during
        startup", seen on a 2-core machine at load 20+) is started again, twice at most."""
        name = name or next(n for n in (f"node{i}" for i in self._names) if n not in self._used)
        self._used.add(name)
        for attempt in range(3):
            node = self._start_node(name, num_cpus=num_cpus, resources=resources, labels=labels, env=env)
            if not wait:
                return node
            try:
                self.wait_for_nodes()
                return node
            except RuntimeError:
                if attempt == 2 or STARTUP_TIMEOUT not in node.process.log():
                    raise
                self.remove_node(node)
        raise AssertionError("unreachable")

    def _start_node(self, name: str, *, num_cpus: float, resources: dict | None, labels: dict | None,
                    env: dict | None) -> Node:
        marker = f"{self.root.name}-{name}-{time.monotonic_ns()}"
        temp_dir = Path(tempfile.mkdtemp(prefix="rn", dir="/tmp"))  # short: Ray's socket paths stay < 108 bytes
        ray = str(Path(sys.executable).parent / "ray")
        argv = [ray, "start", "--block", "--address", self.address, "--node-ip-address", "127.0.0.1",
                "--temp-dir", str(temp_dir), "--disable-usage-stats",
                "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                *worker_ports(), *_agent_ports(), *_placement_args(num_cpus, resources, labels, name)]
        mounts = " && ".join(f"mount -t tmpfs -o size=2g tmpfs {shlex.quote(str(p))}"
                             for p in (self.local_dir, temp_dir))
        script = f"{mounts} && exec {shlex.join(argv)}"
        node_env = {**self.env, **(env or {}), NODE_ENV: marker, **HEALTH_CHECK_ENV,
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_ADDRESS": self.address}  # as for the head
        process = start_process(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                                env=node_env, log_path=self.root / f"{name}.log")
        node = Node(name=name, process=process, marker=marker, temp_dir=temp_dir, num_cpus=num_cpus,
                    resources=dict(resources or {}), labels=dict(labels or {}))
        self.nodes.append(node)
        return node

    def remove_node(self, node: Node, *, allow_graceful: bool = False) -> None:
        """SIGKILLs the node's raylet and its processes (a lost machine); `allow_graceful` stops it instead."""
        node.stop() if allow_graceful else node.kill()
        self.nodes.remove(node)
        shutil.rmtree(node.temp_dir, ignore_errors=True)

    def alive_node_names(self) -> list[str]:
        from ray.util.state import list_nodes

        # Filtered here: the State API's own filter counts dead nodes against its limit and then refuses
        # the answer as truncated.
        nodes = list_nodes(address=self.dashboard_url, limit=10000, raise_on_missing_output=False)
        return sorted(n.node_name for n in nodes if n.state == "ALIVE")

    def wait_for_nodes(self, timeout: float = 180) -> None:
        """Waits until the cluster lists exactly the head and the nodes started and not removed as alive."""
        want = sorted(["head", *(n.name for n in self.nodes)])
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.process.proc.poll() is not None:
                    raise RuntimeError(f"node {node.name} exited ({node.process.proc.returncode}):\n{node.process.log()}")
            try:
                names = self.alive_node_names()
            except Exception as err:  # noqa: BLE001 - the dashboard may be busy; retried until the deadline
                names = [f"<state API: {err}>"]
            if names == want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster nodes alive {names}, expected {want} after {timeout:.0f}s")
            time.sleep(0.5)

    def wait_for_dead(self, node: Node, timeout: float = 60) -> None:
        """Waits until the cluster has declared a killed node dead (its resources gone from the cluster)."""
        deadline = time.monotonic() + timeout
        while node.name in self.alive_node_names():
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node.name} still listed alive {timeout:.0f}s after it was killed")
            time.sleep(0.5)

    def shutdown(self) -> list[int]:
        """Stops every node and the head; returns the PIDs still alive afterwards (none expected)."""
        for node in list(self.nodes):
            self.remove_node(node)
        return self.head.stop()


def start_cluster(*, env: dict, root: Path, head_cpus: float = 1, head_resources: dict | None = None,
                  head_labels: dict | None = None) -> Cluster:
    """A head node on 127.0.0.1 (its temp dir under `root`) and no other node yet; `root/local` is the
    node-local folder (make ACTIONLAB_HOME and local datasets there)."""
    local_dir = root / "local"
    local_dir.mkdir(parents=True, exist_ok=True)
    env = {**env, **HEALTH_CHECK_ENV, **START_WAIT_ENV}
    head = start_ray_head(env=env, log_dir=root / "head", num_cpus=head_cpus,
                          extra=_placement_args(0, head_resources, head_labels, "head")[2:])
    return Cluster(head=head, env=env, root=root, local_dir=local_dir)


def cluster_env(root: Path, **extra: str) -> dict:
    """A node's environment: the test S3 credentials (never the developer's), state folder node-local."""
    return base_env(ACTIONLAB_HOME=str(root / "local" / "home"), RAY_AUTH_MODE="disabled",
                    **credentials_env(root / "aws"), **extra)


@pytest.fixture(scope="session")
def ray_cluster_session(tmp_path_factory):
    if not NETNS:
        pytest.skip("starts a Ray cluster: run through scripts/test.sh (as root) so Ray is confined to a private "
                    "network namespace")
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to give each node a mount namespace of its own")
    root = tmp_path_factory.mktemp("cluster", numbered=True)
    cluster = start_cluster(env=cluster_env(root), root=root, head_cpus=1)
    try:
        cluster.add_node(num_cpus=1, name="node2")
        yield cluster
    finally:
        left = cluster.shutdown()
    assert not left, f"Ray processes left after stopping the test cluster: {left}"


@pytest.fixture
def ray_cluster(ray_cluster_session, monkeypatch):
    """The shared 2-node cluster (head 1 CPU, `node2` 1 CPU with a disk of its own), `RAY_ADDRESS` set in
    this process. Nodes a test adds are removed after it; a killed base node is started again."""
    cluster = ray_cluster_session
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    yield cluster
    for node in list(cluster.nodes):
        if node.name != "node2" or not node.alive():
            cluster.remove_node(node)
    if not any(n.name == "node2" for n in cluster.nodes):
        cluster.add_node(num_cpus=1, name="node2")
    cluster.wait_for_nodes()
    cluster.head.wait_idle()
