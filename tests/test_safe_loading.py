"""Nothing executes code from a checkpoint or a config: malicious pickles are refused unexecuted (resume
state, model directories, warm starts, `actionlab predict`), and the source holds no unsafe loader.

The payload is a pickle whose `__reduce__` writes a marker file; every test checks that the marker was
never written.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actionlab import tracking
from actionlab.models import folder
from actionlab.train.loop import load_init_weights
from actionlab.train.resume import load_state

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this calls `open(marker, "w")`: the file appears if any loader runs pickled code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a loader executed code from a pickle"


def _write_payload(path: Path, marker: Path, *, torch_format: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if torch_format:  # what `torch.save` writes: a zip holding the pickle
        torch.save({"model": Payload(marker), "epoch": 3}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def _meta() -> dict:
    return {"workload": "tsn", "params": {"backbone": "resnet18", "pretrained": False}, "classes": ["a", "b"],
            "num_frames": 4, "stride": 1, "size_px": 32, "resize_px": 32, "sampling": "segments",
            "mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch_save", "raw_pickle"])
def test_resume_state_with_a_pickle_payload_is_refused(tmp_path, marker, torch_format):
    path = _write_payload(tmp_path / "epoch_0003" / "state.pt", marker, torch_format=torch_format)
    with pytest.raises(ValueError) as info:
        load_state(path)
    text = str(info.value)
    assert str(path) in text and "refused unexecuted" in text and "tracking.run_name" in text


def test_resume_state_written_by_the_loop_loads(tmp_path):
    model = torch.nn.Linear(3, 2)
    buf = tracking.MetricBuffer("run")
    buf.add({"val/top1": 0.5}, step=1)
    state = {"model": model.state_dict(), "epoch": 1, "torch_rng": torch.get_rng_state(), "bad_samples": 2,
             "tracking": buf.state()}
    torch.save(state, tmp_path / "state.pt")
    loaded = load_state(tmp_path / "state.pt")
    assert loaded["epoch"] == 1 and loaded["tracking"]["pending"][0][2] == {"val/top1": 0.5}


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch_save", "raw_pickle"])
def test_model_dir_with_a_pickle_as_weights_is_refused(tmp_path, marker, torch_format):
    model_dir = tmp_path / "model"
    _write_payload(model_dir / folder.MODEL_FILE, marker, torch_format=torch_format)
    (model_dir / folder.META_FILE).write_text(json.dumps(_meta()))
    with pytest.raises(ValueError, match=r"model\.safetensors is not a safetensors file.*never unpickles"):
        folder.load_model(str(model_dir))
    with pytest.raises(ValueError, match="never unpickles"):
        load_init_weights(torch.nn.Linear(2, 2), str(model_dir))


def test_meta_that_is_not_json_is_refused(tmp_path, marker):
    model_dir = tmp_path / "model"
    _write_payload(model_dir / folder.META_FILE, marker, torch_format=False)
    with pytest.raises(ValueError, match=r"meta\.json is not JSON"):
        folder.load_model(str(model_dir))


def test_predict_cli_refuses_a_pickled_model(tmp_path, marker, index_video):
    model_dir = tmp_path / "model"
    _write_payload(model_dir / folder.MODEL_FILE, marker, torch_format=True)
    (model_dir / folder.META_FILE).write_text(json.dumps(_meta()))
    video = index_video("v.mp4", num_frames=8)
    proc = subprocess.run([sys.executable, "-m", "actionlab", "predict", "--model", str(model_dir), str(video)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ACTIONLAB_HOME": str(tmp_path / "home")})
    assert proc.returncode != 0
    assert "is not a safetensors file" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


# Loaders that can execute code from a file, and the safe spellings the code base uses instead.
UNSAFE = [
    (re.compile(r"torch\.load\((?![^)]*weights_only=True)"), "torch.load without weights_only=True"),
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"\byaml\.(unsafe_)?load\((?![^)]*Loader=yaml\.SafeLoader)"), "yaml.load (use yaml.safe_load)"),
    (re.compile(r"\bdill\.|\bcloudpickle\.loads?\(|joblib\.load\("), "dill / cloudpickle / joblib loading"),
    (re.compile(r"allow_pickle=True"), "numpy allow_pickle=True"),
    (re.compile(r"mlflow\.pytorch\.load_model"), "mlflow.pytorch.load_model (unpickles)"),
]


def test_no_unsafe_loader_in_the_source():
    found = []
    for top in ("platform", "workloads", "tune_spaces"):
        for path in (REPO / top).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                for pattern, what in UNSAFE:
                    if pattern.search(line):
                        found.append(f"{path.relative_to(REPO)}:{number}: {what}")
    assert not found, "\n".join(found)
