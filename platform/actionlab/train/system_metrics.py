"""MLflow system metrics of a training run, sampled where the training runs.

MLflow's own `SystemMetricsMonitor` (CPU, memory, disk, network; GPU utilisation and memory through
nvidia-ml-py when a GPU is present) runs in the first Train worker of each node, so the charts show
the machines that decode and compute, not the driver's. Several nodes get `system/node<N>/...` keys.
Sampling every `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` seconds (MLflow's variable, default 10);
`ACTIONLAB_SYSTEM_METRICS=0` turns it off. It needs psutil (a dependency of actionlab). Unlike MLflow's
own monitor, it goes on after the tracking server was unreachable.
"""

from __future__ import annotations

import os
import sys

from ray.train.v2._internal.execution.callback import WorkerCallback

ENABLE_ENV = "ACTIONLAB_SYSTEM_METRICS"


def start_monitor(run_id: str, *, tracking_uri: str, node_id: str | None = None):
    """Starts MLflow's monitor on `run_id`, continuing its step count; None when off or psutil is missing."""
    if os.environ.get(ENABLE_ENV, "1") == "0":
        return None
    try:
        import psutil  # noqa: F401  (MLflow's CPU monitor needs it)
    except ImportError:
        sys.stderr.write("actionlab: no system metrics: psutil is not installed (pip install psutil)\n")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from .. import tracking

    class Monitor(SystemMetricsMonitor):
        """MLflow's monitor ends its thread for good when one request to the server fails; this one
        starts its loop again after a sampling interval, until `finish()`. (A tracking outage is
        survived by training, see `tracking.MetricBuffer`; the system metrics go on too.)"""

        def monitor(self):
            while not self._shutdown_event.is_set():
                super().monitor()
                self._shutdown_event.wait(self.sampling_interval)

    tracking.hide_credentials_in_mlflow_logs()  # its warnings quote the tracking URI
    monitor = Monitor(run_id, resume_logging=True, node_id=node_id, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


class SystemMetrics(WorkerCallback):
    """Runs `start_monitor` in each node's local rank 0 Train worker for the run's lifetime."""

    def __init__(self, run_id: str, tracking_uri: str):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self._monitor = None

    def after_init_train_context(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        if ctx.get_local_rank() != 0:
            return
        several_nodes = ctx.get_world_size() > ctx.get_local_world_size()
        node_id = f"node{ctx.get_node_rank()}" if several_nodes else None
        self._monitor = start_monitor(self.run_id, tracking_uri=self.tracking_uri, node_id=node_id)

    def before_worker_shutdown(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
