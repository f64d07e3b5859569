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
FINISH_WAIT_S = 15.0  # beyond one sampling interval, how long `finish()` waits for a request in flight


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

    from .. import storage, tracking
    from ..data.decode import first_line as error_line

    def first_line(err: BaseException) -> str:
        return storage.redact_text(error_line(err))

    class Monitor(SystemMetricsMonitor):
        """MLflow's monitor with a loop of our own: MLflow's ends its thread for good when one request to
        the server fails, and its `finish()` waits without limit for a request that is retrying. Here
        samples are taken on while the server is unreachable and published when it is back (a tracking
        outage is survived by training too: `tracking.MetricBuffer`); the loop ends when the run is no
        longer RUNNING or at `finish()`, which waits one sampling interval and a little more at most."""

        def monitor(self):
            from mlflow.tracking.client import MlflowClient

            client, failing = MlflowClient(self._tracking_uri), False
            while not self._shutdown_event.is_set():
                for _ in range(self.samples_before_logging):
                    self.collect_metrics()
                    if self._shutdown_event.wait(self.sampling_interval):
                        return
                try:
                    if client.get_run(self._run_id).info.status != "RUNNING":
                        return
                    try:
                        self.publish_metrics(self.aggregate_metrics())
                    except Exception:
                        self.mlflow_logger.data = []  # the failed write: its step is taken again, not written twice
                        raise
                except Exception as err:  # noqa: BLE001 - unreachable or failing: sample on, say so once
                    if not failing:
                        sys.stderr.write(f"actionlab: system metrics not written ({first_line(err)}); "
                                         "sampling goes on\n")
                    failing = True
                    continue
                if failing:
                    sys.stderr.write("actionlab: system metrics written again\n")
                failing = False

        def finish(self):
            if self._process is None:
                return
            self._shutdown_event.set()
            self._process.join(timeout=self.sampling_interval + FINISH_WAIT_S)
            if not self._process.is_alive():  # else its request is still retrying: the last samples are dropped
                try:
                    self.mlflow_logger.flush()
                except Exception as err:  # noqa: BLE001
                    sys.stderr.write(f"actionlab: the last system metrics were not written ({first_line(err)})\n")
            self._process = None

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
