"""`actionlab quickstart` end to end, as the README runs it (fewer epochs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.environ.get("ACTIONLAB_TEST_NETNS"),
        reason="starts Ray: run through scripts/test.sh (as root) so Ray is confined to a private network namespace",
    ),
]


def test_quickstart(tmp_path, ray_address):
    home = tmp_path / "home"
    env = dict(os.environ, ACTIONLAB_HOME=str(home), RAY_ADDRESS=ray_address, RAY_AUTH_MODE="disabled",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "actionlab", "quickstart", "--epochs", "1", "--json"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = proc.stdout
    for step in ("[1/4] dataset", "[2/4] training tsm", "[3/4] registering", "[4/4] predicting"):
        assert step in out
    assert "epoch 1/1 done" in out + proc.stderr  # progress from the Ray Train worker
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["model_uri"] == "models:/actionlab-quickstart@champion"
    assert summary["registered_version"] == "1" and summary["champion_moved"]
    assert 0.0 <= summary["val/top1"] <= 1.0
    assert summary["mlflow_ui"].startswith("mlflow ui --backend-store-uri sqlite:///")
    assert (home / "mlflow.db").is_file()
    videos = sorted((home / "data" / "motion" / "videos").glob("*.mp4"))
    assert len(videos) == 6 * 48
    assert sum(1 for line in out.splitlines() if ": predicted " in line) == 3
