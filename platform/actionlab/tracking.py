"""MLflow runs: where they are stored, their lifecycle (start, params, metrics, tags, artifacts, end)
and surviving a tracking-server outage (`MetricBuffer`).

Driven by this module rather than Ray's MLflow callbacks: the driver creates (or reopens) the run,
Ray Train's rank 0 writes to it by run id, and `MLFLOW_TRACKING_URI` is always explicit because
Ray workers change directory. With nothing configured, runs go to an embedded SQLite store with
local artifacts under the state folder (`ACTIONLAB_HOME`, default `~/.actionlab`).

What a run saves as a model lives in `models.folder`; registered versions and aliases in
`models.registry`.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import os
import time
from pathlib import Path

RUN_NAME_TAG = "actionlab.run_name"
CHECKPOINT_URI_TAG = "actionlab.checkpoint"  # the Ray checkpoint (local dir or s3://...) the weights came from
ERROR_TAG = "actionlab.error"  # why a run failed, as the driver saw it; cleared when a rerun resumes it
OUTAGE_TAG = "actionlab.tracking_outage"  # what happened when the tracking server was unreachable
WORKER_NODES_TAG = "actionlab.worker_nodes"  # Ray node ids the run's Train workers ran on, comma-separated
WAIT_ENV = "ACTIONLAB_MLFLOW_WAIT_S"  # how long the end of a run waits for an unreachable server (default 600)


def home() -> Path:
    """The state folder: embedded MLflow store, checkpoints, video cache, generated data."""
    return Path(os.environ.get("ACTIONLAB_HOME") or Path.home() / ".actionlab").expanduser().resolve()


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store under the state folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home() / 'mlflow.db'}"


def ui_command() -> str:
    from . import storage

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {storage.redact(uri)}"  # printed: never the user:password of the URI
    return f"mlflow ui --backend-store-uri {uri}"


def client():
    import mlflow

    hide_credentials_in_mlflow_logs()
    return mlflow.MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


class _RedactCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from . import storage

        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return True
        shown = storage.redact_text(message)
        if shown != message:
            record.msg, record.args = shown, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = storage.redact_text(record.exc_text)
        return True


@functools.cache
def hide_credentials_in_mlflow_logs() -> None:
    """Masks user:password in what MLflow's loggers print (once a process: `client()` calls it each time).

    MLflow's warnings quote the failing request's URL, credentials included; the system-metrics
    monitor, for one, logs "Failed to log system metrics: API request to http://user:password@..."
    while the tracking server is down.
    """
    import importlib

    importlib.import_module("mlflow")  # importing it installs the handler its loggers write through

    for handler in logging.getLogger("mlflow").handlers:
        if not any(isinstance(f, _RedactCredentials) for f in handler.filters):
            handler.addFilter(_RedactCredentials())


def experiment_id(name: str) -> str:
    """Creates the experiment if needed; embedded stores keep artifacts under the state folder."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (home() / "mlartifacts").as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_runs(experiment: str, run_name: str):
    """Runs of `experiment` whose stable actionlab run name is `run_name`, newest first."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
    )


def start_run(experiment: str, run_name: str, *, tags: dict | None = None, parent_run_id: str = "") -> str:
    """Creates a run and returns its id."""
    all_tags = {RUN_NAME_TAG: run_name, "mlflow.runName": run_name, "mlflow.user": getpass.getuser()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags.update(tags or {})
    run = client().create_run(experiment_id(experiment), run_name=run_name, tags=all_tags)
    return run.info.run_id


def log_params(run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    existing = client().get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), 100):
        client().log_batch(run_id, params=new[i : i + 100])


def log_metrics(run_id: str, metrics: dict, *, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    if batch:
        client().log_batch(run_id, metrics=batch)


def set_tags(run_id: str, tags: dict) -> None:
    for key, value in tags.items():
        client().set_tag(run_id, key, str(value))


def delete_tag(run_id: str, key: str) -> None:
    """Removes a run's tag; a tag that is not there is fine."""
    from mlflow.exceptions import MlflowException

    try:
        client().delete_tag(run_id, key)
    except MlflowException:
        pass  # no such tag


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def log_artifacts(run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    client().log_artifacts(run_id, str(local_dir), artifact_path)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    import io
    import sys

    from . import storage

    # MLflow prints "View run ... at: <tracking URI>/#/..." here, user:password included; print it masked.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        client().set_terminated(run_id, status=status)
    if printed.getvalue():
        sys.stdout.write(storage.redact_text(printed.getvalue()))


# --- surviving a tracking-server outage ------------------------------------------------------------


def is_outage(err: BaseException) -> bool:
    """True when a tracking call failed because the server is unreachable or failing (5xx), not refused."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    return isinstance(err, OSError | ConnectionError | TimeoutError)


@contextlib.contextmanager
def _fail_fast():
    # MLflow's HTTP client retries a refused connection for about 4 minutes by default; rank 0 would
    # stall training that long. Buffered writes try once and keep their data for the next flush.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="15")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def add_worker_nodes(run_id: str, nodes: list[str]) -> bool:
    """Adds Ray node ids to the run's `WORKER_NODES_TAG`, keeping the ones a previous attempt of the
    run used (a run resumed after losing a node shows both). False when the server is unreachable:
    the tag is left as it was and training goes on."""
    try:
        with _fail_fast():
            c = client()
            seen = [n for n in c.get_run(run_id).data.tags.get(WORKER_NODES_TAG, "").split(",") if n]
            seen += [n for n in dict.fromkeys(nodes) if n not in seen]
            c.set_tag(run_id, WORKER_NODES_TAG, ",".join(seen))
        return True
    except Exception as err:  # noqa: BLE001 - only an outage is forgiven, see below
        if is_outage(err):
            return False
        raise


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class MetricBuffer:
    """Rank 0's metric writer: survives a tracking-server outage and writes each (metric, step) once.

    Values are queued with the time they were measured and written on `flush()`; when the server is
    unreachable they stay queued (and go into the checkpoint through `state()`, so a worker restart
    loses nothing) and are retried on the next flush. A (metric, step) already in the run's history is
    never written again: after a restart, redone epochs keep the values first logged, so the history
    has no gaps and no duplicates.
    """

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.pending: list[tuple[int, int, dict]] = []  # (step, timestamp ms, {key: value})
        self.outage: dict = {}  # failed_writes, first, last, error, written_late
        self._logged: dict[str, set[int]] = {}
        self.down = False  # the last flush failed: what the next one writes is written late

    def restore(self, state: dict | None) -> None:
        """Takes back the queue and outage record saved in a checkpoint by `state()`."""
        state = state or {}
        self.pending = [(int(s), int(t), dict(m)) for s, t, m in state.get("pending", [])] + self.pending
        self.outage = {**dict(state.get("outage") or {}), **self.outage}
        self.down = self.down or bool(self.pending and self.outage)

    def state(self) -> dict:
        """What a checkpoint keeps: plain lists and dicts, loadable with `torch.load(weights_only=True)`."""
        return {"pending": [[s, t, dict(m)] for s, t, m in self.pending], "outage": dict(self.outage)}

    def add(self, metrics: dict, *, step: int) -> None:
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        if values:
            self.pending.append((int(step), int(time.time() * 1000), values))

    def log(self, metrics: dict, *, step: int) -> bool:
        self.add(metrics, step=step)
        return self.flush()

    def flush(self) -> bool:
        """Writes the queue; False (queue kept) when the server is unreachable.

        Raises:
            MlflowException: the server refused the write (a 4xx: not an outage).
        """
        if not self.pending:
            return True
        try:
            with _fail_fast():
                written = self._write()
        except Exception as err:
            if not is_outage(err):
                raise
            now = time.time()
            self.outage["failed_writes"] = int(self.outage.get("failed_writes", 0)) + 1
            self.outage.setdefault("first", _utc(now))
            self.outage["last"] = _utc(now)
            from . import storage

            self.outage["error"] = storage.redact_text(str(err).splitlines()[0])[:300]
            self.down = True
            return False
        if self.down:
            self.outage["written_late"] = int(self.outage.get("written_late", 0)) + written
            self.down = False
        return True

    def _write(self) -> int:
        from mlflow.entities import Metric

        c = client()
        for key in sorted({k for _, _, m in self.pending for k in m} - self._logged.keys()):
            self._logged[key] = {m.step for m in c.get_metric_history(self.run_id, key)}
        batch, seen = [], set()
        for step, stamp, metrics in self.pending:
            for key, value in metrics.items():
                if step in self._logged[key] or (key, step) in seen:
                    continue
                seen.add((key, step))
                batch.append(Metric(key, value, stamp, step))
        for i in range(0, len(batch), 1000):
            chunk = batch[i : i + 1000]
            c.log_batch(self.run_id, metrics=chunk)
            for m in chunk:
                self._logged[m.key].add(m.step)
        self.pending = []
        return len(batch)

    def finish(self, *, wait_s: float | None = None, poll_s: float = 5.0) -> None:
        """Flushes the queue, waiting up to `wait_s` (`ACTIONLAB_MLFLOW_WAIT_S`, default 600) for the server.

        Raises:
            RuntimeError: the server stayed unreachable; the values are still in the last checkpoint.
        """
        wait_s = float(os.environ.get(WAIT_ENV) or 600) if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while not self.flush():
            if time.monotonic() > deadline:
                from . import storage

                raise RuntimeError(
                    f"the MLflow server {storage.redact(tracking_uri())} was unreachable for more than {wait_s:.0f}s "
                    f"at the end of the run ({self.outage.get('error', '')}); {sum(len(m) for _, _, m in self.pending)} "
                    f"metric values are kept in the last checkpoint. Bring the server back and rerun the same "
                    f"command: it resumes this run and writes them (or raise {WAIT_ENV})."
                )
            time.sleep(poll_s)

    def outage_note(self) -> str:
        """A line for the run's `actionlab.tracking_outage` tag; empty when nothing went wrong."""
        if not self.outage:
            return ""
        return (
            f"MLflow unreachable for {self.outage.get('failed_writes', 0)} metric writes between "
            f"{self.outage.get('first')} and {self.outage.get('last')} ({self.outage.get('error', '')}); "
            f"training went on and {self.outage.get('written_late', 0)} buffered metric values were written "
            f"when it came back, with their original timestamps"
        )
