"""Real local servers for the integration tests, as a pytest plugin (`pytest_plugins = ["servers"]`).

An S3 endpoint (moto's server mode, a real HTTP server that boto3 and pyarrow talk to), an MLflow
tracking server started through `actionlab mlflow-server` (SQLite store, artifacts proxied to that S3),
a `ray start --head` cluster, and headless Chromium driven over the DevTools protocol. Everything
listens on 127.0.0.1 on a free port, keeps its files under the test's temp dir, and is stopped by the
test by PID (process group of the process the test started). They are started only inside the
private network + PID namespace of scripts/test.sh (ACTIONLAB_TEST_NETNS=1).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NETNS = bool(os.environ.get("ACTIONLAB_TEST_NETNS"))
needs_netns = pytest.mark.skipif(
    not NETNS,
    reason="starts servers: run through scripts/test.sh (as root) so they are confined to a private network namespace",
)

# Distinctive fake credentials: tests assert they never show up in MLflow, logs or printed config.
ACCESS_KEY = "actionlabtestaccesskey"
SECRET_KEY = "actionlab-test-secret-5f2c9d"


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


# --- S3 (moto server) -----------------------------------------------------------------------------


@dataclass
class S3Endpoint:
    url: str
    env: dict = field(default_factory=dict)  # what a client process needs to reach it

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def make_bucket(self, name: str) -> str:
        c = self.client()
        if name not in {b["Name"] for b in c.list_buckets().get("Buckets", [])}:
            c.create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server in this process (a thread serving real HTTP on 127.0.0.1:free port)."""
    if not NETNS:
        pytest.skip("starts an S3 server: run through scripts/test.sh (private network namespace)")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    aws_dir = tmp_path_factory.mktemp("aws")
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(aws_dir / "config"),  # never the developer's own profiles
        "AWS_SHARED_CREDENTIALS_FILE": str(aws_dir / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        yield S3Endpoint(url=f"http://{host}:{port}", env=env)
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """`s3_server` with its variables in this process's environment (for in-process storage calls)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    from actionlab import storage

    storage.retry._remote_filesystem.cache_clear()
    yield s3_server
    storage.retry._remote_filesystem.cache_clear()


class OutageProxy:
    """A loopback TCP proxy in front of an endpoint that can be switched into an outage.

    During an outage new connections are reset as soon as they are accepted and open ones are dropped
    (reset on both sides), as when a load balancer or the endpoint itself goes away; the server behind
    keeps its state. `on_request(pattern, seconds)` starts an outage the first time a client sends bytes
    containing `pattern` (an HTTP request line, say), dropping that very request.
    """

    def __init__(self, host: str, port: int):
        import threading

        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down_until = 0.0
        self._triggers: list[list] = []  # [pattern, seconds, fired]
        self.outages: list[tuple[str, float]] = []  # (what started it, seconds)
        self.reset_connections = 0
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def on_request(self, pattern: bytes, seconds: float) -> None:
        with self._lock:
            self._triggers.append([pattern, seconds, False])

    def outage(self, seconds: float, why: str = "by hand") -> None:
        with self._lock:
            self._down_until = time.monotonic() + seconds
            self.outages.append((why, seconds))
            doomed, self._open = self._open, set()
        for sock in doomed:
            self._reset(sock)

    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        self.outage(0, "stop")

    def _reset(self, sock: socket.socket) -> None:
        import struct

        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        except OSError:
            pass
        self._close(sock)
        self.reset_connections += 1

    @staticmethod
    def _close(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RD)  # wakes the pump thread blocked in recv() on it
        except OSError:
            pass
        sock.close()

    def _accept(self) -> None:
        import threading

        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down():
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                late = self.down()  # an outage began while this one was connecting: it is dropped too
                if not late:
                    self._open |= {client, upstream}
            if late:
                self._reset(client)
                self._reset(upstream)
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if from_client and self._fires(data):
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                mine = {src, dst} & self._open
                self._open -= mine
            for sock in mine:
                self._close(sock)

    def _fires(self, data: bytes) -> bool:
        with self._lock:
            trigger = next((t for t in self._triggers if not t[2] and t[0] in data), None)
            if trigger is None:
                return False
            trigger[2] = True
        self.outage(trigger[1], trigger[0].decode(errors="replace"))
        return True


# --- MLflow server ----------------------------------------------------------------------------------


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


# --- Ray cluster ------------------------------------------------------------------------------------


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


def start_ray_head(*, env: dict, log_dir: Path, num_cpus: int = 4) -> RayHead:
    """`ray start --head --block` on 127.0.0.1 with a short temp dir (unix socket paths < 108 bytes)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    gcs_port, dashboard_port = free_port(), free_port()
    ray = str(Path(sys.executable).parent / "ray")
    argv = [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--include-dashboard", "true",
            "--ray-client-server-port", str(free_port()), "--num-cpus", str(num_cpus), "--temp-dir", str(temp_dir),
            "--disable-usage-stats"]
    process = start_process(argv, env=env, log_path=log_dir / "ray-head.log")
    url = f"http://127.0.0.1:{dashboard_port}"
    head = RayHead(dashboard_url=url, gcs_address=f"127.0.0.1:{gcs_port}", temp_dir=temp_dir, process=process)
    try:
        process.wait_until(lambda: http_ok(f"{url}/api/version"), timeout=240, what="ray head (dashboard)")
    except BaseException:
        head.stop()
        raise
    return head


# --- headless Chromium over the DevTools protocol ------------------------------------------------


class Chromium:
    """Debian's chromium, headless, driven through its DevTools websocket (aiohttp comes with Ray)."""

    FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1400,1000"]

    def __init__(self, tmp_dir: Path):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.skip("chromium is not installed (`apt-get install chromium`; .ci/run installs it)")
        profile = tmp_dir / "chromium-profile"
        profile.mkdir(parents=True)
        self.process = start_process([binary, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     env=base_env(), log_path=tmp_dir / "chromium.log")
        port_file = profile / "DevToolsActivePort"
        self.process.wait_until(lambda: port_file.is_file() and port_file.read_text().strip(), timeout=60,
                                what="chromium")
        port = int(port_file.read_text().split()[0])
        targets = []

        def page_target() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets[:] = [t for t in json.load(r) if t.get("type") == "page"]
            except OSError:
                return False
            return bool(targets)

        self.process.wait_until(page_target, timeout=30, what="chromium page target")
        self.ws_url = targets[0]["webSocketDebuggerUrl"]

    def _run(self, commands: list[tuple[str, dict]]) -> list[dict]:
        import aiohttp

        async def go() -> list[dict]:
            results = []
            async with aiohttp.ClientSession() as session, session.ws_connect(self.ws_url, max_msg_size=0) as ws:
                for i, (method, params) in enumerate(commands, start=1):
                    await ws.send_json({"id": i, "method": method, "params": params})
                    while True:
                        message = await ws.receive_json(timeout=60)
                        if message.get("id") == i:
                            if "error" in message:
                                raise RuntimeError(f"{method}: {message['error']}")
                            results.append(message.get("result", {}))
                            break
            return results

        return asyncio.run(go())

    def open(self, url: str) -> None:
        self._run([("Page.navigate", {"url": url})])

    def text(self) -> str:
        result = self._run([("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                                  "returnByValue": True})])[0]
        return result.get("result", {}).get("value", "")

    def wait_for_text(self, *needles: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(1)
        raise AssertionError(f"page never showed {needles}; it shows:\n{text[-3000:]}")

    def screenshot(self, path: Path) -> Path:
        result = self._run([("Page.captureScreenshot", {"format": "png"})])[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def stop(self) -> None:
        self.process.stop()


def artifacts_dir() -> Path:
    """Where tests keep files for people to look at (screenshots): $ACTIONLAB_TEST_ARTIFACTS or build/."""
    path = Path(os.environ.get("ACTIONLAB_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
