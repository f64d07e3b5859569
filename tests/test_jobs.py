"""Ray Jobs against a real `ray start --head` cluster on 127.0.0.1: `ray job submit --runtime-env
platform/runtime_env.yaml -- python -m actionlab train ...` and `actionlab submit` (Jobs SDK), with
runs landing in a real MLflow server and checkpoints in S3 (moto)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from actionlab import jobs, storage

from servers.process import REPO, base_env, last_json, needs_netns
from servers.ray_head import start_ray_head
from servers.s3 import SECRET_KEY

FAST = ["--set", "clip.num_frames=4", "--set", "clip.size_px=32", "--set", "clip.resize_px=32",
        "--set", "data.batch_size=4", "--set", "data.num_loader_workers=0"]


# --- runtime env and entrypoint (no cluster) -----------------------------------------------------------


def test_runtime_env_file_resolves_against_the_repository(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-forwarded")
    spec = jobs.runtime_env(env={"ACTIONLAB_DECODER": "pyav"})
    assert spec["working_dir"] == str(REPO)
    assert spec["py_modules"] == [str(REPO / "platform" / "actionlab")]
    assert spec["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
                                "AWS_ENDPOINT_URL": "http://minio:9000", "ACTIONLAB_DECODER": "pyav"}
    assert ".git/" in spec["excludes"]


def test_credentials_are_never_put_in_a_job(monkeypatch):
    for key, value in (("AWS_SECRET_ACCESS_KEY", "x"), ("MLFLOW_TRACKING_PASSWORD", "x"), ("DB", "s3://a:b@bkt/x")):
        with pytest.raises(ValueError, match="credential"):
            jobs.runtime_env(env={key: value})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:pw@mlflow:5000")
    assert "MLFLOW_TRACKING_URI" not in jobs.runtime_env().get("env_vars", {})


def test_entrypoint_is_an_actionlab_command():
    assert jobs.entrypoint(["train", "smoke", "--set", "optim.lr=0.1 "]) == \
        "python -m actionlab train smoke --set 'optim.lr=0.1 '"
    with pytest.raises(ValueError, match="after `--`"):
        jobs.entrypoint([])
    with pytest.raises(ValueError, match="subcommand"):
        jobs.entrypoint(["python", "-m", "actionlab", "train"])


# --- a real cluster ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(s3_server, mlflow_server, tmp_path_factory):
    """A head node whose environment is a cluster's: MLflow server URI, S3 endpoint and credentials."""
    root = tmp_path_factory.mktemp("ray-cluster")
    env = base_env(ACTIONLAB_HOME=str(root / "home"), MLFLOW_TRACKING_URI=mlflow_server.url, **s3_server.env)
    head = start_ray_head(env=env, log_dir=root)
    try:
        yield head
    finally:
        left = head.stop()
    assert not left, f"Ray processes left after stopping the cluster: {left}"


def _client_env(**extra):
    """A submitting user's shell: no MLflow URI, no AWS credentials of their own."""
    return base_env(RAY_TMPDIR=tempfile.mkdtemp(prefix="rc", dir="/tmp"), **extra)


def _ray_job_submit(cluster, *entrypoint, timeout=900):
    ray = str(Path(sys.executable).parent / "ray")
    argv = [ray, "job", "submit", "--address", cluster.dashboard_url, "--runtime-env", "platform/runtime_env.yaml",
            "--", *entrypoint]
    return subprocess.run(argv, cwd=REPO, env=_client_env(), capture_output=True, text=True, timeout=timeout)




@needs_netns
@pytest.mark.integration
def test_runtime_env_ships_the_packages(cluster):
    proc = _ray_job_submit(cluster, "python", "-c",
                           "import actionlab, workloads; print('AL', actionlab.__file__); print('WL', workloads.__file__)",
                           timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines() if line.startswith(("AL ", "WL "))}
    # Imported from the uploaded packages, not from the checkout or the venv.
    assert "runtime_resources" in lines["AL"] and "runtime_resources" in lines["WL"], proc.stdout[-2000:]


@needs_netns
@pytest.mark.integration
def test_ray_job_submit_trains_into_the_mlflow_server(cluster, mlflow_server, synth_dataset):
    proc = _ray_job_submit(cluster, "python", "-m", "actionlab", "train", "smoke",
                           "--set", f"data.manifest={synth_dataset}", "--set", "schedule.epochs=2",
                           "--set", "tracking.experiment=jobs-cli", *FAST, "--json")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout + proc.stderr
    out = last_json(proc.stdout)
    run = mlflow_server.client().get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["clip.num_frames"] == "4"
    assert [m.step for m in mlflow_server.client().get_metric_history(out["run_id"], "val/top1")] == [1, 2]
    assert "checkpoint" in {a.path for a in mlflow_server.client().list_artifacts(out["run_id"])}
    assert SECRET_KEY not in proc.stdout + proc.stderr


@needs_netns
@pytest.mark.integration
def test_actionlab_submit_follows_a_job_from_s3_to_s3(cluster, mlflow_server, s3, synth_dataset, tmp_path):
    data = s3.make_bucket("jobs-data") + "/motion"
    storage.upload_dir(synth_dataset.parent, data)
    ckpt = s3.make_bucket("jobs-checkpoints") + "/runs"
    env = _client_env(MLFLOW_TRACKING_URI=mlflow_server.url, AWS_ENDPOINT_URL=s3.url, AWS_DEFAULT_REGION="us-east-1")
    argv = [sys.executable, "-m", "actionlab", "submit", "--address", cluster.dashboard_url, "--follow", "--",
            "train", "smoke", "--set", f"data.manifest={data}/manifest.parquet", "--set", f"storage.uri={ckpt}",
            "--set", "schedule.epochs=1", "--set", "tracking.experiment=jobs-sdk", *FAST, "--json"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-8000:]
    assert "job id: actionlab-train-" in proc.stdout and "SUCCEEDED" in proc.stdout
    assert "env forwarded: AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, MLFLOW_TRACKING_URI" in proc.stdout
    out = last_json(proc.stdout)
    assert mlflow_server.client().get_run(out["run_id"]).info.status == "FINISHED"
    assert storage.exists(f"{ckpt}/{out['run_name']}/epoch_0001/state.pt")
    assert SECRET_KEY not in text

    failing = subprocess.run([sys.executable, "-m", "actionlab", "submit", "--address", cluster.dashboard_url,
                              "--follow", "--", "train", "no-such-recipe"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert failing.returncode == 1, failing.stdout[-3000:] + failing.stderr[-3000:]
    assert "FAILED" in failing.stdout and "no-such-recipe" in failing.stdout
