"""An S3 endpoint for the tests: moto's server mode in this process (a thread serving real HTTP on
127.0.0.1 that boto3 and pyarrow talk to), and `OutageProxy`, a loopback proxy in front of it that can
take the endpoint away mid-run."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from servers.process import NETNS

# Distinctive fake credentials: tests assert they never show up in MLflow, logs or printed config.
ACCESS_KEY = "actionlabtestaccesskey"
SECRET_KEY = "actionlab-test-secret-5f2c9d"


def credentials_env(aws_dir: Path) -> dict:
    """What a process needs to sign requests to the test endpoint: the fake keys, and AWS config files
    in `aws_dir` (never the developer's own profiles)."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": str(aws_dir / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(aws_dir / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


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
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1",
           **credentials_env(tmp_path_factory.mktemp("aws"))}
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
