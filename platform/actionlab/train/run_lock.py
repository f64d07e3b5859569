"""One writer per run: a lock file in the run's storage folder, held while a driver trains the run.

A second launch of the same run name while the first is alive is refused with a message naming the
live holder (host, pid, command, since when). The lock is released when the driver exits; a holder
that died without releasing it (SIGKILL, lost node) leaves a stale lock that the next launch takes
over: at once when the holder ran on this host and its process is gone, or on a Ray node that the
cluster has declared dead (a sweep's trial started again after its node was lost), else when its
heartbeat is older than `ACTIONLAB_LOCK_STALE_S` (default 120 s; the holder refreshes it every 20 s).

Object stores have no exclusive create here, so taking a lock is write-then-read-back: of two
launches racing within the same second, the one whose token is read back wins and the other is
refused.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid

from .. import storage

LOCK_FILE = ".actionlab-lock.json"
STALE_ENV = "ACTIONLAB_LOCK_STALE_S"
HEARTBEAT_S = 20.0


class RunLockedError(RuntimeError):
    """Another live process is training this run."""


def process_started(pid: int) -> str:
    """The kernel's start time of `pid` (clock ticks since boot) or '' when unknown; tells a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def pid_alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = process_started(pid)
    return not (started and now and now != started)


def _ray_node() -> str:
    """This process's Ray node id when it is connected to Ray (a Tune trial, a Train driver), else ''."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


def _ray_node_dead(node_id: str) -> bool:
    """True when the connected Ray cluster lists `node_id` as dead; False when alive or unknown."""
    ray = sys.modules.get("ray")
    if not node_id or ray is None or not ray.is_initialized():
        return False
    return any(n.get("NodeID") == node_id and not n.get("Alive") for n in ray.nodes())


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class RunLock:
    """The lock of the run stored at `run_dir` (local folder or s3://...)."""

    def __init__(self, run_dir: str, run_name: str):
        self.uri = storage.join(run_dir, LOCK_FILE)
        self.run_name = run_name
        self.token = uuid.uuid4().hex
        self.stale_s = float(os.environ.get(STALE_ENV) or 120)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict:
        pid = os.getpid()
        return {
            "token": self.token,
            "run_name": self.run_name,
            "host": socket.gethostname(),
            "pid": pid,
            "pid_started": process_started(pid),
            "ray_node": _ray_node(),
            "since": getattr(self, "_since", None) or _utc(time.time()),
            "heartbeat": time.time(),
            "command": " ".join(storage.redact_text(a) for a in sys.argv)[:500],
        }

    def read(self) -> dict | None:
        """The current holder's record, None when free (no file, released, or unreadable)."""
        try:
            holder = json.loads(storage.read_text(self.uri))
        except (FileNotFoundError, ValueError, UnicodeDecodeError):
            return None
        return None if not isinstance(holder, dict) or holder.get("released") else holder

    def is_live(self, holder: dict) -> bool:
        """True while the holder can still be writing: its process runs (same host) or it beats, and
        its Ray node (when it had one) is not dead."""
        if _ray_node_dead(str(holder.get("ray_node", ""))):
            return False
        if holder.get("host") == socket.gethostname():
            return pid_alive(int(holder.get("pid", 0)), str(holder.get("pid_started", "")))
        return time.time() - float(holder.get("heartbeat", 0)) < self.stale_s

    def acquire(self) -> dict | None:
        """Takes the lock; returns the stale holder it replaced (None when it was free).

        Raises:
            RunLockedError: a live process holds it (the message names it and says what to do).
        """
        holder = self.read()
        if holder is not None and holder.get("token") != self.token and self.is_live(holder):
            raise RunLockedError(self._refusal(holder))
        self._since = _utc(time.time())
        storage.write_bytes(self.uri, json.dumps(self._record()).encode())
        time.sleep(0.2)  # a racing writer's record lands before the read-back
        now = self.read()
        if now is None or now.get("token") != self.token:
            raise RunLockedError(self._refusal(now or {}))
        self._thread = threading.Thread(target=self._beat, name="actionlab-run-lock", daemon=True)
        self._thread.start()
        return holder

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                current = self.read()
                if current is None or current.get("token") == self.token:
                    storage.write_bytes(self.uri, json.dumps(self._record()).encode())
            except OSError:
                continue  # storage outage: the next beat tries again

    def release(self) -> None:
        """Marks the lock free (only when this process still holds it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            current = self.read()
            if current is not None and current.get("token") == self.token:
                storage.write_bytes(self.uri, json.dumps({"released": _utc(time.time()), "by": self.token}).encode())
        except OSError:
            pass  # unreachable storage: the lock goes stale when this process is gone

    def _refusal(self, holder: dict) -> str:
        where = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        return (
            f"run '{self.run_name}' is being trained right now by {where} since {holder.get('since', '?')} "
            f"(`{holder.get('command', '?')}`; lock {storage.redact(self.uri)}). Two drivers would write the "
            f"same checkpoints: wait for it to finish, stop it (kill {holder.get('pid', 'PID')} on "
            f"{holder.get('host', 'its host')}), or pick another name with --set tracking.run_name=NAME. "
            f"A lock whose holder died is taken over by the next launch (after {self.stale_s:.0f}s without "
            f"a heartbeat when the holder ran on another host; {STALE_ENV})."
        )
