"""Sweep files are validated before anything runs; a real ASHA sweep tracks parent/child runs."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import tune_spaces
from actionlab.config import ConfigError, resolve
from actionlab.tune.space import load_sweep, param_space
from actionlab.tune.sweep import pareto_front, trials_that_fit


def write_sweep(tmp_path, **changes) -> Path:
    doc = {
        "recipe": "smoke",
        "overrides": {"schedule.epochs": 2},
        "metric": "val/top1",
        "mode": "max",
        "num_samples": 2,
        "scheduler": {"name": "asha", "grace_period": 1},
        "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}},
    }
    doc.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("name", tune_spaces.list_spaces())
def test_every_shipped_space_validates(name):
    spec = load_sweep(name)
    assert spec.space and set(param_space(spec)) == set(spec.space)


def test_unknown_distribution_names_nearest(tmp_path):
    path = write_sweep(tmp_path, space={"optim.lr": {"log_uniform": [1e-4, 1e-2]}})
    with pytest.raises(ConfigError, match=r"unknown distribution 'log_uniform'; did you mean 'loguniform'"):
        load_sweep(str(path))


def test_unknown_config_key_names_nearest(tmp_path):
    path = write_sweep(tmp_path, space={"optim.lrate": {"choice": [0.1, 0.01]}})
    with pytest.raises(ConfigError, match=r"space.optim.lrate: unknown config key 'optim.lrate'"):
        load_sweep(str(path))


def test_unknown_workload_param_in_space(tmp_path):
    path = write_sweep(tmp_path, space={"workload.params.fold_dv": {"choice": [4, 8]}})
    with pytest.raises(ConfigError, match=r"unknown parameter 'fold_dv'.*did you mean 'fold_div'"):
        load_sweep(str(path))


def test_wrong_value_type_and_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"space.schedule.epochs: .*expected int"):
        load_sweep(str(write_sweep(tmp_path, space={"schedule.epochs": {"choice": ["many"]}})))
    with pytest.raises(ConfigError, match=r"unknown sweep key 'num_sample'; did you mean 'num_samples'"):
        load_sweep(str(write_sweep(tmp_path, num_sample=3)))
    with pytest.raises(ConfigError, match=r"scheduler 'hyperband' is not one of"):
        load_sweep(str(write_sweep(tmp_path, scheduler={"name": "hyperband"})))


def test_pareto_front_keeps_undominated_points():
    points = [("a", 1.0, 0.5), ("b", 2.0, 0.7), ("c", 2.0, 0.6), ("d", 3.0, 0.7), ("e", 0.5, 0.2)]
    assert sorted(pareto_front(points)) == ["a", "b", "e"]


def test_trials_that_fit_explains_itself():
    cfg = resolve({}, ["compute.num_workers=2", "compute.cpus_per_worker=1.5", "compute.use_gpu=false"])
    fit, why = trials_that_fit(cfg, {"CPU": 8})
    assert fit == 2 and "3 CPU" in why and "8 CPU" in why
    gpu = resolve({}, ["compute.num_workers=2"])
    assert trials_that_fit(gpu, {"CPU": 64, "GPU": 4})[0] == 2


@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get("ACTIONLAB_TEST_NETNS"),
                    reason="starts Ray: run through scripts/test.sh (as root) so Ray is confined to a private network namespace")
def test_asha_sweep_tracks_parent_children_plot_and_registers(tmp_path, synth_dataset):
    import mlflow

    home = tmp_path / "home"
    space = write_sweep(
        tmp_path,
        overrides={"data.manifest": str(synth_dataset), "schedule.epochs": 3, "clip.num_frames": 4,
                   "clip.size_px": 32, "clip.resize_px": 32, "data.batch_size": 4, "data.num_loader_workers": 0,
                   "compute.cpus_per_worker": 1, "tracking.experiment": "sweeps"},
        num_samples=3,
        scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2},
        space={"optim.lr": {"choice": [1e-4, 1e-3, 3e-3]}},
    )
    env = dict(os.environ, ACTIONLAB_HOME=str(home), RAY_TMPDIR=tempfile.mkdtemp(prefix="rs", dir="/tmp"),
               RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "actionlab", "tune", str(space), "--register", "swept", "--json"],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "3 trials, 2 at a time" in proc.stdout
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["trials"]) == 3
    assert {t["status"] for t in out["trials"]} <= {"completed", "early-stopped"}
    assert out["best"]["status"] == "completed" and out["best"]["epochs"] == 3
    assert out["pareto_front"]

    uri = f"sqlite:///{home / 'mlflow.db'}"
    c = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = c.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["sweep.space"]) == {"optim.lr": {"choice": [1e-4, 1e-3, 3e-3]}}
    assert {"results.csv", "accuracy_vs_gmacs.png", "sweep.json"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}
    exp = c.get_experiment_by_name("sweeps")
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3
    for child in children:
        row = next(t for t in out["trials"] if t["trial_id"] == child.data.tags["actionlab.trial_id"])
        if row["status"] == "early-stopped":
            assert child.data.tags["actionlab.early_stopped"].startswith("after epoch")
            assert child.info.status == "KILLED"
        else:
            assert child.info.status == "FINISHED"
        logged = len(c.get_metric_history(child.info.run_id, "val/top1"))
        if row["status"] == "early-stopped":
            # The stop reaches the workers asynchronously: an epoch already under way may still log.
            assert row["epochs"] <= logged <= 3
        else:
            assert logged == row["epochs"]
    assert out["registered"]["version"] == "1"
    mv = c.get_model_version_by_alias("swept", "champion")
    assert mv.run_id == out["best"]["run_id"]
