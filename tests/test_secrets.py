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
