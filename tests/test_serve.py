"""`actionlab serve NAME@ALIAS`: a Ray Serve deployment that predicts what `actionlab predict` does,
batches requests, and follows the alias: moving @champion rolls it to the new version while a bounded
load runs, with no failed request."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import urllib.request

import pytest

from actionlab.models import predict as predict_mod
from actionlab import tracking
from actionlab.models import folder, registry
from actionlab.models.serve import load_test, parse_model

from servers.process import base_env, free_port, needs_netns, start_process
from test_mlflow_model import _checkpoint


def test_parse_model():
    assert parse_model("motion-tsm") == ("motion-tsm", "champion")
    assert parse_model("models:/motion-tsm@candidate") == ("motion-tsm", "candidate")
    with pytest.raises(ValueError, match="NAME@ALIAS"):
        parse_model("motion-tsm/3")


def _register(home, top1: float, seed: int) -> str:
    import torch

    torch.manual_seed(seed)
    run_id = tracking.start_run("serve-test", f"r3d-{seed}")
    tracking.log_metrics(run_id, {"val/top1": top1}, step=0)
    tracking.log_artifacts(run_id, _checkpoint(home / f"ckpt{seed}"), folder.CHECKPOINT_ARTIFACT)
    tracking.end_run(run_id)
    return registry.register(run_id, "served")["version"]


def _post(url: str, videos: list[str]) -> dict:
    req = urllib.request.Request(url, data=json.dumps({"videos": videos}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.integration
@needs_netns
def test_serve_predicts_batches_and_follows_the_alias(synth_dataset, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ACTIONLAB_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _register(home, 0.9, seed=1) == "1"
    assert _register(home, 0.1, seed=2) == "2"  # worse: @champion stays on 1
    videos = sorted(str(p) for p in (synth_dataset.parent / "videos").glob("*.mp4"))[:4]
    port = free_port()
    env = base_env(ACTIONLAB_HOME=str(home), RAY_TMPDIR=tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    server = start_process(["actionlab", "serve", "served@champion", "--port", str(port), "--poll-s", "1",
                            "--num-cpus", "0.5", "--top-k", "3"], env=env, log_path=tmp_path / "serve.log")
    url = f"http://127.0.0.1:{port}/"
    try:
        server.wait_until(lambda: "serving served@champion" in server.log(), timeout=300, what="actionlab serve")
        answer = _post(url, videos[:2])
        expected = predict_mod.predict("models:/served/1", videos[:2], top_k=3)
        for got, want in zip(answer["predictions"], expected):
            assert got["version"] == "1" and got["video"] == want["video"]
            assert [t["label"] for t in got["top"]] == [t["label"] for t in want["top"]]
            assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in want["top"]], abs=2e-4)
        assert "error" in _post(url, ["/no/such.mp4"])["predictions"][0]

        during: dict = {}
        loader = threading.Thread(target=lambda: during.update(load_test(url, videos, requests=160, concurrency=4)))
        loader.start()
        time.sleep(0.5)
        tracking.client().set_registered_model_alias("served", "champion", "2")  # as in the registry UI
        loader.join(300)
        deadline = time.time() + 60  # the replica polls the registry every second
        while _post(url, videos[:1])["predictions"][0]["version"] != "2":
            assert time.time() < deadline, "the deployment did not follow @champion to version 2 within 60 s"
            time.sleep(0.5)
        after = load_test(url, videos, requests=8, concurrency=2)
    finally:
        server.stop()
    print("during the alias move:", during, "after:", after)
    assert during["failed"] == 0 and after["failed"] == 0
    assert during["versions"].get("1", 0) > 0
    assert after["versions"] == {"2": 8}
