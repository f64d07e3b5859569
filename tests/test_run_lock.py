"""One writer per run: the run lock refuses a second live driver naming it, is released on exit and
taken over once its holder is dead (same host: its process is gone; another host: no heartbeat)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from actionlab.train.run_lock import LOCK_FILE, RunLock, RunLockedError


def test_second_holder_refused_naming_the_live_one(tmp_path):
    first = RunLock(str(tmp_path / "run"), "tsm_8x1_motion")
    assert first.acquire() is None
    second = RunLock(str(tmp_path / "run"), "tsm_8x1_motion")
    with pytest.raises(RunLockedError) as info:
        second.acquire()
    message = str(info.value)
    import os

    assert f"pid {os.getpid()} on host {socket.gethostname()}" in message and "tracking.run_name" in message
    assert str(tmp_path / "run" / LOCK_FILE) in message
    first.release()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["released"]
    assert second.acquire() is None  # released: free
    second.release()


def test_dead_holder_on_this_host_is_taken_over(tmp_path):
    holder = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(holder.stdout)
    lock = RunLock(str(tmp_path / "run"), "r")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(
        {"token": "old", "host": socket.gethostname(), "pid": dead_pid, "pid_started": "1", "heartbeat": time.time(),
         "since": "2026-01-01T00:00:00Z"}))
    stale = lock.acquire()
    assert stale["pid"] == dead_pid and json.loads((tmp_path / "run" / LOCK_FILE).read_text())["token"] == lock.token
    lock.release()


def test_reused_pid_is_not_the_holder(tmp_path):
    import os

    lock = RunLock(str(tmp_path), "r")
    record = {"token": "old", "host": socket.gethostname(), "pid": os.getpid(), "pid_started": "1",
              "heartbeat": time.time()}
    assert not lock.is_live(record)  # this PID, but a process started at another time


@pytest.mark.parametrize("age_s, live", [(5, True), (500, False)])
def test_other_host_lives_by_heartbeat(tmp_path, age_s, live, monkeypatch):
    monkeypatch.setenv("ACTIONLAB_LOCK_STALE_S", "120")
    lock = RunLock(str(tmp_path), "r")
    record = {"token": "old", "host": "some-other-node", "pid": 1, "heartbeat": time.time() - age_s}
    assert lock.is_live(record) is live


@pytest.mark.parametrize("node, live", [("lost-node", False), ("live-node", True), ("", True)])
def test_holder_on_a_dead_ray_node_is_stale_at_once(tmp_path, node, live, monkeypatch):
    """A sweep's trial lost with its node is started again on another machine within seconds: the lock
    its dead driver left (fresh heartbeat, another host) must not refuse it for ACTIONLAB_LOCK_STALE_S."""
    import types

    fake_ray = types.SimpleNamespace(is_initialized=lambda: True, nodes=lambda: [
        {"NodeID": "lost-node", "Alive": False}, {"NodeID": "live-node", "Alive": True}])
    monkeypatch.setitem(sys.modules, "ray", fake_ray)  # the cluster's node table, as ray.nodes() gives it
    lock = RunLock(str(tmp_path), "r")
    record = {"token": "old", "host": "some-other-node", "pid": 1, "heartbeat": time.time(), "ray_node": node}
    assert lock.is_live(record) is live


# --- with real kills: a driver SIGKILLed mid-run, a second launch while it lives, a rerun --------------

# Epochs enough that the first driver still trains when the second (its own Ray start, up to a minute on a
# busy 2-core box) has been refused: epochs take 1-5 s here, and with 4 the first had finished by then.
EPOCHS = 8
FAST = ["--set", "clip.num_frames=4", "--set", "clip.size_px=32", "--set", "clip.resize_px=32",
        "--set", "data.batch_size=4", "--set", "data.num_loader_workers=0", "--set", f"schedule.epochs={EPOCHS}",
        "--set", "tracking.run_name=locked", "--json"]


def _ray_actor_pids(marker: str) -> dict[int, str]:
    """Train controller and worker processes carrying the test marker, by PID (Ray titles them `ray::...`)."""
    from pathlib import Path

    from servers.process import MARKER_ENV, pids_with_env

    out = {}
    for pid in pids_with_env(MARKER_ENV, marker):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(("ray::TrainController", "ray::RayTrainWorker")):
            out[pid] = cmd.split("\0")[0]
    return out


def _alive(pid: int) -> bool:
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.integration
def test_killed_driver_takes_its_actors_along_and_a_second_launch_is_refused(synth_dataset, tmp_path):
    import os
    import signal
    import tempfile

    from servers.process import MARKER_ENV, NETNS, kill_driver, last_json, registered_checkpoint
    from test_train_integration import mlflow_client

    if not NETNS:
        pytest.skip("starts Ray: run through scripts/test.sh (as root) so Ray is confined to a private network namespace")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(ACTIONLAB_HOME=str(tmp_path / "home"), RAY_TMPDIR=tempfile.mkdtemp(prefix="rl", dir="/tmp"),
               RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    args = [sys.executable, "-m", "actionlab", "train", "smoke", "--set", f"data.manifest={synth_dataset}", *FAST]
    run_dir = tmp_path / "home" / "runs" / "locked"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(args, env={**env, MARKER_ENV: "first"}, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (run_dir / ".actionlab-lock.json").exists():  # locked: the first is starting Ray
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.time() < deadline, "no lock within 600 s"
            time.sleep(0.2)
        second = subprocess.run(args, env={**env, MARKER_ENV: "second"}, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-4000:]
        assert f"run 'locked' is being trained right now by pid {driver.pid} on host" in second.stderr
        assert driver.poll() is None  # the first one trains on

        while not registered_checkpoint(run_dir):  # any: epochs of 1-5 s may be past the first by now
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.time() < deadline, "no first checkpoint within 600 s"
            time.sleep(0.5)

        actors = _ray_actor_pids("first")
        assert any(c.startswith("ray::TrainController") for c in actors.values()), actors
        assert any(c.startswith("ray::RayTrainWorker") for c in actors.values()), actors
        # The driver's whole process group (its GCS and raylet with it), as `timeout -s KILL`, a scheduler or
        # the OOM killer of a container does: nobody is left to tell the actors, which run in groups of their own.
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
        killed_at = time.monotonic()
        while any(_alive(pid) for pid in actors) and time.monotonic() - killed_at < 60:
            time.sleep(0.5)
        left = {pid: cmd for pid, cmd in actors.items() if _alive(pid)}
        print(f"Train actors of the killed driver gone after {time.monotonic() - killed_at:.1f}s; left: {left}")
        assert not left, f"Train actors outlived their driver by 60 s: {left}"
    finally:
        kill_driver(driver, "first")  # whatever else its Ray left (GCS, raylet, ...) before the rerun

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    assert f"its previous driver (pid {driver.pid} on " in rerun.stdout and "taking over its lock" in rerun.stdout
    out = last_json(rerun.stdout)
    assert out["resumed"] and out["epoch"] == EPOCHS
    c = mlflow_client(env)
    (run,) = c.search_runs([c.get_experiment_by_name("actionlab-smoke").experiment_id])
    assert run.info.status == "FINISHED"
    # system metrics sampled by the Train worker (CPU, memory; GPU ones on GPU nodes)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= run.data.metrics.keys()
    assert [m.step for m in c.get_metric_history(out["run_id"], "val/top1")] == list(range(1, EPOCHS + 1))
    assert json.loads((run_dir / ".actionlab-lock.json").read_text())["released"]
