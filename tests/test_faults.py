"""Faults a run survives: the MLflow server going away mid-run (metrics buffered, written when it comes
back, the outage recorded on the run), and restarts that must not duplicate metric steps. The worker
SIGKILL + driver SIGKILL + rerun test is test_train_integration.py::test_worker_killed_and_driver_killed_both_resume.

The unit tests use a refused port on 127.0.0.1 as the "down" server and the embedded SQLite store as the
one that comes back; the integration test stops a real `mlflow server` process by PID during a Ray
Train run and starts it again on the same port and database.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from actionlab import tracking

from servers.process import base_env, free_port, http_ok, needs_netns, start_process
from servers.s3 import ACCESS_KEY, SECRET_KEY

PASSWORD = "actionlab-mlflow-pw-7c1e"  # in the tracking URI the run is given; must never be shown or logged


@pytest.fixture
def stores(tmp_path, monkeypatch):
    """Switches MLFLOW_TRACKING_URI between a refused port ("down") and a SQLite store ("up")."""
    monkeypatch.setenv("ACTIONLAB_HOME", str(tmp_path / "home"))
    up = f"sqlite:///{tmp_path / 'mlflow.db'}"
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    def use(which: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", up if which == "up" else down)

    use("up")
    return use


def _history(run_id: str, key: str) -> list[tuple[int, float, int]]:
    return [(m.step, m.value, m.timestamp) for m in tracking.client().get_metric_history(run_id, key)]


def test_metrics_are_buffered_while_the_server_is_down(stores):
    run_id = tracking.start_run("faults", "outage-unit")
    buf = tracking.MetricBuffer(run_id)
    assert buf.log({"val/top1": 0.25}, step=1)

    stores("down")
    started = time.monotonic()
    assert not buf.log({"val/top1": 0.5, "train/loss": 1.5}, step=2)
    assert not buf.log({"val/top1": 0.75, "train/loss": 1.0}, step=3)
    assert time.monotonic() - started < 30, "a down server must not stall training for MLflow's long retries"
    assert buf.outage["failed_writes"] == 2 and "127.0.0.1" in buf.outage["error"]
    stamp_2 = buf.pending[0][1]

    # A worker restart during the outage: the queue travels in the checkpoint (weights_only loading).
    blob = io.BytesIO()
    torch.save({"tracking": buf.state()}, blob)
    blob.seek(0)
    restarted = tracking.MetricBuffer(run_id)
    restarted.restore(torch.load(blob, weights_only=True)["tracking"])
    restarted.add({"val/top1": 0.75, "train/loss": 1.0}, step=3)  # the redone epoch queues step 3 again

    stores("up")
    assert restarted.flush()
    assert [s for s, _, _ in _history(run_id, "val/top1")] == [1, 2, 3]
    assert [(s, v) for s, v, _ in _history(run_id, "train/loss")] == [(2, 1.5), (3, 1.0)]
    assert _history(run_id, "val/top1")[1][2] == stamp_2, "buffered values keep the time they were measured"
    note = restarted.outage_note()
    assert "unreachable for 2 metric writes" in note and "4 buffered metric values were written" in note


def test_steps_already_logged_are_not_written_again(stores):
    """After a restart from the epoch-1 checkpoint, the redone epoch 2 and the step-0 model stats are
    already in MLflow: nothing is duplicated, new steps are written."""
    run_id = tracking.start_run("faults", "dedupe-unit")
    first = tracking.MetricBuffer(run_id)
    first.log({"model/gmacs": 0.1}, step=0)
    first.log({"val/top1": 0.25}, step=1)
    first.log({"val/top1": 0.5}, step=2)  # logged, then the worker died before checkpoint 2 counted

    again = tracking.MetricBuffer(run_id)
    again.log({"model/gmacs": 0.1}, step=0)
    again.log({"val/top1": 0.55}, step=2)
    again.log({"val/top1": 0.75}, step=3)
    assert [(s, v) for s, v, _ in _history(run_id, "val/top1")] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert [s for s, _, _ in _history(run_id, "model/gmacs")] == [0]
    assert again.outage_note() == ""


def test_finish_gives_up_with_a_clear_error(stores):
    run_id = tracking.start_run("faults", "finish-unit")
    stores("down")
    buf = tracking.MetricBuffer(run_id)
    buf.add({"val/top1": 0.5}, step=1)
    with pytest.raises(RuntimeError, match="unreachable.*kept in the last checkpoint.*rerun the same command"):
        buf.finish(wait_s=0.0, poll_s=0.0)
    assert len(buf.pending) == 1


def test_a_refused_write_is_not_an_outage(stores):
    from mlflow.exceptions import MlflowException

    buf = tracking.MetricBuffer("0" * 32)  # no such run: a 404, raised at once
    with pytest.raises(MlflowException):
        buf.log({"val/top1": 0.5}, step=1)


# --- a real tracking server stopped during a Ray Train run --------------------------------------------

FAST = ["--set", "clip.num_frames=4", "--set", "clip.size_px=32", "--set", "clip.resize_px=32",
        "--set", "data.batch_size=4", "--set", "data.num_loader_workers=0"]


def _start_mlflow(root: Path, port: int, log_name: str):
    env = base_env(ACTIONLAB_HOME=str(root / "server-home"))
    argv = [sys.executable, "-m", "actionlab", "mlflow-server", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
            str(root / "artifacts")]
    process = start_process(argv, env=env, log_path=root / log_name)
    process.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/health"), timeout=300, what="mlflow server")
    return process


@needs_netns
@pytest.mark.integration
def test_training_survives_the_mlflow_server_going_down(tmp_path, synth_dataset, ray_address):
    import mlflow

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start_mlflow(tmp_path, port, "server-1.log")
    # The server has no auth and ignores the basic-auth header; the password and the AWS keys are there
    # to be grepped for in everything the run prints and writes to MLflow.
    env = base_env(ACTIONLAB_HOME=str(tmp_path / "home"),
                   MLFLOW_TRACKING_URI=f"http://actionlab:{PASSWORD}@127.0.0.1:{port}",
                   AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, RAY_ADDRESS=ray_address)
    runs = tmp_path / "home" / "runs" / "outage"
    log_path = tmp_path / "train.log"
    argv = [sys.executable, "-m", "actionlab", "train", "smoke", "--set", f"data.manifest={synth_dataset}", *FAST,
            "--set", "schedule.epochs=3", "--set", "tracking.run_name=outage", "--json"]
    with open(log_path, "w") as log:
        driver = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not (runs / "epoch_0001").exists():
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "no first checkpoint"
            time.sleep(0.5)
        server.stop()  # by process group; the run is now mid-training with no tracking server
        assert not http_ok(f"{url}/health")
        while not (runs / "epoch_0002").exists():
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "training did not go on without the server"
            time.sleep(0.5)
        server = _start_mlflow(tmp_path, port, "server-2.log")  # same port, same database
        assert driver.wait(600) == 0, log_path.read_text()[-6000:]
        output = log_path.read_text()
        assert "MLflow unreachable" in output and "training goes on" in output

        c = mlflow.MlflowClient(tracking_uri=url)
        exp = c.get_experiment_by_name("actionlab-smoke")
        (run,) = c.search_runs([exp.experiment_id])
        assert run.info.status == "FINISHED"
        for key in ("val/top1", "train/loss", "data/bad_samples"):
            assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
        assert [m.step for m in c.get_metric_history(run.info.run_id, "model/params")] == [0]
        note = run.data.tags[tracking.OUTAGE_TAG]
        assert "MLflow unreachable" in note and "buffered metric values were written" in note
        assert "checkpoint" in {a.path for a in c.list_artifacts(run.info.run_id)}

        config_yaml = Path(c.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
        written = [output, config_yaml, repr(run.data.params), repr(run.data.tags)]
        for secret in (PASSWORD, SECRET_KEY):
            assert not [t for t in written if secret in t], f"a secret reached the output or MLflow: {secret}"
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
        server.stop()
