"""Registered versions are MLflow pyfunc models (models from code, nothing pickled): the MLmodel
carries a signature and pinned requirements; `mlflow.pyfunc.load_model` in a fresh process and
`mlflow models serve` over real HTTP predict what `actionlab predict` predicts."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from actionlab.models import predict as predict_mod
from actionlab import tracking
from actionlab.models import folder, registry

from servers.process import REPO, base_env, free_port, http_ok, needs_netns, start_process

NAME = "r3d-tiny"


def _checkpoint(out: Path) -> Path:
    from workloads import get_workload

    from actionlab.models.meta import ModelMeta

    spec = get_workload("r3d")
    params = spec.resolve_params(spec.tiny)
    model = spec.build(params, num_classes=4, num_frames=4)
    meta = ModelMeta(workload="r3d", params=params, classes=("left", "right", "up", "down"),
                     preprocessing=spec.input_for(params, num_frames=4, stride=2, size_px=32, resize_px=32))
    return folder.save_model_dir(out, model, meta)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny R3D checkpoint in a finished run, registered as `r3d-tiny` v1 @champion (embedded store)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTIONLAB_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run_id = tracking.start_run("pyfunc-test", "r3d-tiny_4x1")
        tracking.log_metrics(run_id, {"val/top1": 0.5}, step=0)
        tracking.log_artifacts(run_id, _checkpoint(home / "ckpt"), folder.CHECKPOINT_ARTIFACT)
        tracking.end_run(run_id)
        info = registry.register(run_id, NAME)
        mv = tracking.client().get_model_version_by_alias(NAME, "champion")
        model_dir = folder.resolve_model_dir(f"models:/{NAME}@champion")
    return {"home": home, "info": info, "source": mv.source, "run_id": run_id, "model_dir": model_dir}


def test_version_is_an_mlflow_model_from_code(registered):
    import mlflow

    assert registered["info"]["alias_moved"] and registered["source"].startswith("models:/m-")
    root = Path(mlflow.artifacts.download_artifacts(registered["source"],
                                                    tracking_uri=f"sqlite:///{registered['home'] / 'mlflow.db'}"))
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["model_code_path"].endswith("pyfunc.py") and "python_model.pkl" not in {p.name for p in root.rglob("*")}
    assert not [p for p in root.rglob("*") if p.suffix in (".pkl", ".pt", ".pth", ".cloudpickle")]
    assert (root / "code" / "actionlab" / "tracking.py").is_file() and (root / "code" / "workloads").is_dir()
    assert (root / "artifacts" / "checkpoint" / "model.safetensors").is_file()
    signature = mlmodel["signature"]
    assert json.loads(signature["inputs"]) == [{"type": "string", "required": True}]
    assert {c["name"] for c in json.loads(signature["outputs"])} == {"video", "labels", "label_ids", "probs", "error"}
    assert json.loads(signature["params"])[0]["name"] == "top_k"
    requirements = (root / "requirements.txt").read_text().split()
    from importlib.metadata import version

    assert f"torch=={version('torch')}" in requirements and f"mlflow=={mlflow.__version__}" in requirements
    assert (root / "python_env.yaml").is_file()
    # actionlab predict's fast path reads the same checkpoint the pyfunc model carries
    assert registered["model_dir"].name == "checkpoint" and (registered["model_dir"] / "meta.json").is_file()


def test_uint8_batch_needs_the_model_frames(registered):
    loaded = folder.load_model(str(registered["model_dir"]))
    batch = np.random.default_rng(0).integers(0, 256, (2, 4, 40, 48, 3), dtype=np.uint8)
    out = predict_mod.predict_clips(loaded, batch, top_k=3)
    assert [len(r["top"]) for r in out] == [3, 3]
    with pytest.raises(ValueError, match=r"uint8 batch \(B, T=4, H, W, 3\)"):
        predict_mod.predict_clips(loaded, batch[:, :3], top_k=3)


LOAD_AND_PREDICT = """
import json, sys, mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(json.loads(sys.argv[2]), params={"top_k": 3})
print("PREDICTIONS " + out.to_json(orient="records"))
"""


def _as_records(predictions: list[dict]) -> list[dict]:
    """`actionlab predict` output -> the pyfunc model's columns."""
    return [
        {"video": p["video"], "labels": [t["class"] for t in p.get("top", [])],
         "label_ids": [t["label"] for t in p.get("top", [])], "probs": [t["prob"] for t in p.get("top", [])],
         "error": p.get("error", "")}
        for p in predictions
    ]


@pytest.mark.integration
@needs_netns
def test_pyfunc_load_and_models_serve_match_actionlab_predict(registered, synth_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIONLAB_HOME", str(registered["home"]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"models:/{NAME}@champion"
    videos = sorted(str(p) for p in (synth_dataset.parent / "videos").glob("*.mp4"))[:3] + ["/no/such/video.mp4"]
    expected = _as_records(predict_mod.predict(uri, videos, top_k=3))
    assert len({tuple(e["probs"]) for e in expected[:3]}) == 3 and expected[3]["error"]

    env = base_env(ACTIONLAB_HOME=str(registered["home"]), MLFLOW_TRACKING_URI=tracking.tracking_uri(),
                   PYTHONPATH=f"{REPO}:{REPO / 'platform'}")
    fresh = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, uri, json.dumps(videos)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    line = next(x for x in fresh.stdout.splitlines() if x.startswith("PREDICTIONS "))
    assert json.loads(line[len("PREDICTIONS "):]) == expected

    port = free_port()
    server = start_process(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, log_path=tmp_path / "serve.log", cwd=tmp_path,
    )
    try:
        server.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), timeout=180, what="mlflow models serve")
        body = json.dumps({"dataframe_split": {"columns": ["video"], "data": [[v] for v in videos]},
                           "params": {"top_k": 3}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        server.stop()
    assert served == expected
    assert server.proc.poll() is not None
