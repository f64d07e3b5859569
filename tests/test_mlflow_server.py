"""`actionlab mlflow-server` (SQLite store, artifacts proxied to S3 on moto) and its registry UI, checked
in headless Chromium: the registered model page shows the version and its alias, the version page
its tags and the source checkpoint. The screenshots are kept as test artifacts."""

from __future__ import annotations

import pytest

from actionlab import tracking
from actionlab.models import folder, registry

from servers.chromium import Chromium
from servers.process import artifacts_dir, needs_netns

pytestmark = [needs_netns, pytest.mark.integration]

CHECKPOINT = "s3://checkpoints/runs/tsm-resnet18_4x1_motion/epoch_0002"


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory):
    """A run with a checkpoint artifact, registered as `ui-tsm` v1 @champion (no training needed)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        return _register(tmp_path_factory.mktemp("ui-model"))


def _register(tmp_path):
    import torch

    run_id = tracking.start_run("ui-test", "tsm-resnet18_4x1_motion", tags={tracking.CHECKPOINT_URI_TAG: CHECKPOINT})
    tracking.log_params(run_id, {"workload.name": "tsm", "data.name": "motion", "clip.num_frames": 4})
    tracking.log_metrics(run_id, {"val/top1": 0.625, "model/gmacs": 0.012}, step=2)
    from workloads import InputFormat, get_workload

    from actionlab.models.meta import ModelMeta

    meta = ModelMeta(workload="tsm", params=get_workload("tsm").params_cls(), classes=("a", "b"),
                     preprocessing=InputFormat("segments", 4, 1, 32, 32, (0.5,) * 3, (0.5,) * 3))
    folder.save_model_dir(tmp_path / "checkpoint", torch.nn.Linear(4, 2), meta)  # an upload, never loaded
    tracking.log_artifacts(run_id, tmp_path / "checkpoint", folder.CHECKPOINT_ARTIFACT)
    tracking.end_run(run_id)
    info = registry.register(run_id, "ui-tsm")
    assert info["version"] == "1" and info["alias_moved"]
    return {"run_id": run_id, "name": "ui-tsm", "version": "1"}


def test_server_stores_artifacts_in_s3(mlflow_server, registered, s3_server):
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket="mlflow-artifacts")["Contents"]}
    assert any(k.endswith(f"{registered['run_id']}/artifacts/checkpoint/model.safetensors") for k in keys)
    mv = mlflow_server.client().get_model_version_by_alias("ui-tsm", "champion")
    assert mv.source.startswith("models:/m-") and mv.tags["checkpoint"] == CHECKPOINT  # an MLflow (pyfunc) model
    assert any(k.endswith("/artifacts/checkpoint/model.safetensors") and "/models/" in k for k in keys)


def test_registry_ui_shows_version_alias_tags_and_checkpoint(mlflow_server, registered, tmp_path):
    browser = Chromium(tmp_path)
    try:
        browser.open(f"{mlflow_server.url}/#/models/ui-tsm")
        page = browser.wait_for_text("ui-tsm", "Version 1", "champion", "workload", "0.625")
        browser.screenshot(artifacts_dir() / "mlflow-registered-model.png")
        assert "champion" in page

        browser.open(f"{mlflow_server.url}/#/models/ui-tsm/versions/1")
        page = browser.wait_for_text("champion", "workload", "top1", "0.625", CHECKPOINT)
        shot = browser.screenshot(artifacts_dir() / "mlflow-model-version.png")
        assert shot.stat().st_size > 10_000
        assert "tsm" in page and "motion" in page
    finally:
        browser.stop()
