"""MLflow system metrics for training runs: the monitor the Train workers start logs CPU and memory
to the run (steps continue after a resume); off with ACTIONLAB_SYSTEM_METRICS=0."""

from __future__ import annotations

import threading
import time

import pytest

from actionlab import tracking
from actionlab.train.system_metrics import start_monitor


@pytest.fixture
def run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    return tracking.start_run("sysmetrics-test", "r")


def _steps(run_id: str, key: str) -> list[int]:
    return [m.step for m in tracking.client().get_metric_history(run_id, key)]


def test_monitor_logs_cpu_and_memory_resumes_its_steps_and_can_be_off(run_id, monkeypatch):
    for _ in range(2):  # a second monitor (a resumed run) continues the step count
        monitor = start_monitor(run_id, tracking_uri=tracking.tracking_uri())
        time.sleep(1.5)
        monitor.finish()
    metrics = tracking.client().get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= metrics.keys()
    steps = _steps(run_id, "system/cpu_utilization_percentage")
    assert len(steps) >= 4 and steps == sorted(set(steps)), steps

    monitor = start_monitor(run_id, tracking_uri=tracking.tracking_uri(), node_id="node1")
    time.sleep(1.0)
    monitor.finish()
    assert "system/node1/cpu_utilization_percentage" in tracking.client().get_run(run_id).data.metrics
    monkeypatch.setenv("ACTIONLAB_SYSTEM_METRICS", "0")
    assert start_monitor(run_id, tracking_uri=tracking.tracking_uri()) is None


def test_the_monitor_goes_on_after_the_server_failed_a_request(run_id, monkeypatch):
    """MLflow's own monitor ends for good when one request fails (a tracking outage); ours samples on."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.client import MlflowClient

    real, failed = MlflowClient.get_run, []

    def get_run_failing_once(self, rid):  # in the monitor's thread, which checks the run before each publish
        if not failed and threading.current_thread().name == "SystemMetricsMonitor":
            failed.append(time.time())
            raise MlflowException("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/get failed", error_code=None)
        return real(self, rid)

    monkeypatch.setattr(MlflowClient, "get_run", get_run_failing_once)
    monitor = start_monitor(run_id, tracking_uri=tracking.tracking_uri())
    deadline = time.monotonic() + 30
    while not (failed and [m for m in tracking.client().get_metric_history(run_id, "system/cpu_utilization_percentage")
                           if m.timestamp / 1000 > failed[0]]) and time.monotonic() < deadline:
        time.sleep(0.2)
    monitor.finish()
    after = [m.step for m in tracking.client().get_metric_history(run_id, "system/cpu_utilization_percentage")
             if m.timestamp / 1000 > failed[0]]
    assert failed and len(after) >= 1, "no system metrics after the failed request"


def test_the_monitor_ends_with_the_run_and_finish_does_not_wait_on_a_stuck_request(run_id, monkeypatch):
    from mlflow.tracking.client import MlflowClient

    from actionlab.train import system_metrics

    monitor = start_monitor(run_id, tracking_uri=tracking.tracking_uri())
    time.sleep(0.5)
    tracking.client().set_terminated(run_id)
    monitor._process.join(10)
    assert not monitor._process.is_alive()  # the run ended: so did the loop, as MLflow's own does
    monitor.finish()

    run = tracking.start_run("sysmetrics-test", "stuck")
    release = threading.Event()
    real = MlflowClient.get_run

    def stuck(self, rid):  # a request retrying against an unreachable server
        if threading.current_thread().name == "SystemMetricsMonitor":
            release.wait(60)
        return real(self, rid)

    monkeypatch.setattr(MlflowClient, "get_run", stuck)
    monkeypatch.setattr(system_metrics, "FINISH_WAIT_S", 0.5)
    monitor = start_monitor(run, tracking_uri=tracking.tracking_uri())
    time.sleep(0.5)
    start = time.monotonic()
    monitor.finish()
    assert time.monotonic() - start < 5  # one sampling interval (0.2 s) and FINISH_WAIT_S, not the request's time
    release.set()
