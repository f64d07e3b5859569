"""No secret reaches printed output, MLflow tags or error messages: passwords in the tracking URI and
AWS keys are masked wherever actionlab writes them. The end-to-end greps (a real MLflow server reached
through a URI with a password, a training run with AWS keys in its environment) are in test_faults.py
(`test_training_survives_the_mlflow_server_going_down`) and test_s3.py.
"""

from __future__ import annotations

import pytest

from actionlab import storage, tracking

PASSWORD = "hunter2-actionlab-pw"


def test_ui_command_masks_the_password(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{PASSWORD}@127.0.0.1:5000")
    text = tracking.ui_command()
    assert PASSWORD not in text and "127.0.0.1:5000" in text


def test_outage_messages_mask_the_password(monkeypatch, tmp_path):
    from servers.process import free_port  # a port nothing listens on

    monkeypatch.setenv("ACTIONLAB_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}")
    buf = tracking.MetricBuffer("0" * 32)
    assert not buf.log({"val/top1": 0.5}, step=1)
    assert buf.outage["error"] and PASSWORD not in buf.outage["error"]
    assert PASSWORD not in buf.outage_note()
    with pytest.raises(RuntimeError) as info:
        buf.finish(wait_s=0.0, poll_s=0.0)
    assert PASSWORD not in str(info.value) and "127.0.0.1" in str(info.value)


@pytest.mark.parametrize("uri", [
    f"http://alice:{PASSWORD}@mlflow.internal:5000",
    f"s3://AKIAEXAMPLE:{PASSWORD}@bucket/runs",
    f"s3://bucket/data/manifest.parquet?endpoint_override=h:9000&secret_key={PASSWORD}",
    f"postgresql://mlflow:{PASSWORD}@db/mlflow",
])
def test_redaction_of_every_uri_form(uri):
    assert PASSWORD not in storage.redact(uri)
    assert PASSWORD not in storage.redact_text(f"storage:\n  uri: {uri}\nerror: could not reach {uri}.")


def test_end_run_prints_the_run_link_without_the_password(monkeypatch, capsys):
    """MLflow prints a "View run" link with the tracking URI on set_terminated; it is masked."""
    from unittest import mock

    def fake_set_terminated(run_id, status=None):
        print(f"View run r at: http://alice:{PASSWORD}@127.0.0.1:5000/#/experiments/1/runs/{run_id}")

    monkeypatch.setattr(tracking, "client", lambda: mock.Mock(set_terminated=fake_set_terminated))
    tracking.end_run("abc")
    out = capsys.readouterr().out
    assert PASSWORD not in out and "http://***@127.0.0.1:5000/#/experiments/1/runs/abc" in out


def test_mlflow_log_lines_and_the_system_metrics_monitor_mask_the_password(tmp_path):
    """MLflow's warnings quote a failing request's URL (its system-metrics monitor logged "Failed to get
    mlflow run: API request to <URL> failed" during an outage); those lines, a logged traceback and
    the monitor's own notes show the URL without its password."""
    import os
    import subprocess
    import sys

    from servers.process import free_port

    uri = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    script = (
        "import logging, time\n"
        "from actionlab import tracking\n"
        "from actionlab.train.system_metrics import start_monitor\n"
        "tracking.hide_credentials_in_mlflow_logs()\n"
        f"logging.getLogger('mlflow.tracking').warning('API request to %s failed', {uri!r})\n"
        "try:\n"
        f"    raise ConnectionError('could not reach ' + {uri!r})\n"
        "except ConnectionError:\n"
        "    logging.getLogger('mlflow.store').exception('a request failed')\n"
        f"monitor = start_monitor('0' * 32, tracking_uri={uri!r})\n"
        "time.sleep(1.5)\n"
        "monitor.finish()\n"
    )
    env = dict(os.environ, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="0.1", MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
               ACTIONLAB_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert "API request to http://***@127.0.0.1" in printed and "could not reach http://***@127.0.0.1" in printed
    assert "system metrics not written" in printed and printed.count("system metrics not written") == 1, printed
    assert PASSWORD not in printed, printed[-3000:]
