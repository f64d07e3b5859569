"""The spine end to end with real parts: generated H.264 files, the session's Ray cluster (a local
instance of its own for the test that kills workers and the driver), the embedded MLflow store, the
registry and `actionlab predict`, all driven through the CLI as a user would.

Ray binds every interface, so these run only inside the private network namespace that
scripts/test.sh creates (ACTIONLAB_TEST_NETNS=1).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from servers.process import MARKER_ENV, actionlab, kill_driver, last_json, registered_checkpoint

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.environ.get("ACTIONLAB_TEST_NETNS"),
        reason="starts Ray: run through scripts/test.sh (as root) so Ray is confined to a private network namespace",
    ),
]

FAST = [
    "--set", "schedule.epochs=2",
    "--set", "clip.num_frames=4",
    "--set", "clip.size_px=32",
    "--set", "clip.resize_px=32",
    "--set", "data.batch_size=4",
    "--set", "data.num_loader_workers=0",
]


@pytest.fixture()
def env(tmp_path):
    """A private state folder and a short Ray temp dir (unix socket paths must stay < 108 bytes)."""
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    e = dict(os.environ)
    e.pop("MLFLOW_TRACKING_URI", None)
    e.pop("RAY_ADDRESS", None)
    e.update(ACTIONLAB_HOME=str(tmp_path / "home"), RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled",
             HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    yield e


def tracking_uri(env) -> str:
    return f"sqlite:///{Path(env['ACTIONLAB_HOME']).resolve() / 'mlflow.db'}"


def mlflow_client(env):
    import mlflow

    uri = tracking_uri(env)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_train_track_register_predict(env, ray_address, synth_dataset):
    env["RAY_ADDRESS"] = ray_address
    manifest = str(synth_dataset)
    out = last_json(actionlab(env, "train", "smoke", "--set", f"data.manifest={manifest}", *FAST, "--json").stdout)
    assert out["epoch"] == 2 and not out["resumed"]
    assert 0.0 <= out["val/top1"] <= 1.0
    run_id = out["run_id"]

    c = mlflow_client(env)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["workload.name"] == "tsm"
    assert run.data.params["clip.num_frames"] == "4"
    # every effective value, defaults included (the smoke recipe sets neither)
    assert run.data.params["workload.params.shift_place"] == "blockres"
    assert run.data.params["workload.params.temporal_pool"] == "False"
    assert [m.step for m in c.get_metric_history(run_id, "val/top1")] == [1, 2]
    assert [m.step for m in c.get_metric_history(run_id, "train/loss")] == [1, 2]
    assert run.data.metrics["model/gmacs"] > 0 and run.data.metrics["model/params"] > 1e6
    assert run.data.metrics["data/bad_samples"] == 0
    artifacts = {a.path for a in c.list_artifacts(run_id)} | {a.path for a in c.list_artifacts(run_id, "checkpoint")}
    assert {"config.yaml", "checkpoint/model.safetensors", "checkpoint/meta.json"} <= artifacts
    eval_files = {a.path for a in c.list_artifacts(run_id, "eval")}
    assert eval_files == {"eval/confusion_matrix.png", "eval/per_class.json"}
    dl = Path(env["ACTIONLAB_HOME"]) / "dl"
    dl.mkdir()
    meta = json.loads(Path(c.download_artifacts(run_id, "checkpoint/meta.json", str(dl))).read_text())
    assert meta["params"]["shift_place"] == "blockres" and meta["params"]["temporal_pool"] is False
    assert "shift_place: blockres" in Path(c.download_artifacts(run_id, "config.yaml", str(dl))).read_text()
    ckpt_dir = Path(out["checkpoints"])
    assert (ckpt_dir / "epoch_0002" / "state.pt").is_file()

    reg = last_json(actionlab(env, "register", run_id, "--name", "motion-tsm", "--json").stdout)
    assert reg["version"] == "1" and reg["alias_moved"]
    mv = c.get_model_version_by_alias("motion-tsm", "champion")
    assert str(mv.version) == "1"
    assert mv.tags["workload"] == "tsm" and mv.tags["frames"] == "4"
    assert float(mv.tags["top1"]) == pytest.approx(out["val/top1"])

    video = str(synth_dataset.parent / "videos" / sorted(os.listdir(synth_dataset.parent / "videos"))[0])
    preds = json.loads(actionlab(env, "predict", "--model", "models:/motion-tsm@champion", video, "--json").stdout)
    assert preds[0]["video"] == video
    top = preds[0]["top"]
    num_classes = len((synth_dataset.parent / "classes.txt").read_text().split())
    assert len(top) == min(5, num_classes)
    assert sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-3) or num_classes > 5
    assert top == sorted(top, key=lambda t: -t["prob"])

    ev = json.loads(actionlab(env, "eval", "--model", "models:/motion-tsm@champion", "--data", manifest,
                              "--clips", "2", "--crops", "3", "--run", run_id, "--json").stdout)
    assert ev["num_videos"] == len(_val_rows(manifest)) and ev["bad_samples"] == 0
    assert 0.0 <= ev["test/top1_2x3"] <= ev["test/top5_2x3"] <= 1.0
    assert "test/top1_2x3" in c.get_run(run_id).data.metrics
    assert "test/confusion_2x3.png" in {a.path for a in c.list_artifacts(run_id, "test")}

    # The same command again: the finished run is kept and the new one gets a suffix.
    again = last_json(actionlab(env, "train", "smoke", "--set", f"data.manifest={manifest}", *FAST,
                                "--set", "schedule.epochs=1", "--json").stdout)
    assert again["run_name"] == out["run_name"] + "-2"
    reg2 = last_json(actionlab(env, "register", again["run_id"], "--name", "motion-tsm", "--json").stdout)
    assert reg2["version"] == "2"
    champion = str(c.get_model_version_by_alias("motion-tsm", "champion").version)
    assert reg2["alias_moved"] == (again["val/top1"] > out["val/top1"])
    assert champion == ("2" if reg2["alias_moved"] else "1")
    history = json.loads(c.get_registered_model("motion-tsm").tags["actionlab.alias_history"])
    assert history[0]["version"] == "1" and history[0]["previous"] is None


def _val_rows(manifest):
    import pandas as pd

    df = pd.read_parquet(manifest)
    return df[df["split"] == "val"]


def _train_worker_pids() -> list[int]:
    """PIDs of live Ray Train worker actors (Ray titles them `ray::RayTrainWorker...`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::RayTrainWorker"):
                pids.append(int(entry.name))
    return pids


def test_worker_killed_and_driver_killed_both_resume(env, synth_dataset, tmp_path):
    """SIGKILL a Ray Train worker mid-run (Ray restarts the group from the last checkpoint), then
    SIGKILL the driver, and rerun the same command: it resumes the same MLflow run to the end, and the
    model registered from it is the one an uninterrupted run would give (tags, last epoch's weights)."""
    manifest = str(synth_dataset)
    args = [sys.executable, "-m", "actionlab", "train", "smoke", "--set", f"data.manifest={manifest}", *FAST,
            "--set", "schedule.epochs=4", "--set", "tracking.run_name=faulty", "--json"]
    storage = Path(env["ACTIONLAB_HOME"]) / "runs" / "faulty"
    log_path = storage.parent.parent / "first.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    driver = subprocess.Popen(args, env={**env, MARKER_ENV: "killed-driver"}, stdout=log, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        # The folder appears when the worker has written it; the restart only resumes from it once the
        # controller has registered it (its snapshot names it), so kill after that.
        while "epoch_0001" not in registered_checkpoint(storage):
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.time() < deadline, "no first checkpoint within 600 s"
            time.sleep(0.5)
        victims = _train_worker_pids()
        assert victims, "no live RayTrainWorker process"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        # Ray relays worker output with a delay: wait for the restarted worker's own words.
        while "resumed from checkpoint at epoch" not in log_path.read_text() or not (storage / "epoch_0002").exists():
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.time() < deadline, "no checkpoint after the worker restart"
            time.sleep(0.5)
    finally:
        kill_driver(driver, "killed-driver")
    log.close()
    first_log = log_path.read_text()
    assert "resumed from checkpoint at epoch 1" in first_log, f"killed {victims}\n" + first_log[-4000:]

    out = last_json(actionlab(env, "train", "smoke", "--set", f"data.manifest={manifest}", *FAST,
                              "--set", "schedule.epochs=4", "--set", "tracking.run_name=faulty", "--json").stdout)
    assert out["resumed"] and out["run_name"] == "faulty" and out["epoch"] == 4
    c = mlflow_client(env)
    runs = c.search_runs([c.get_experiment_by_name("actionlab-smoke").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # Redone epochs are not logged twice: every step once, in order, no gaps (tracking.MetricBuffer).
    for key in ("val/top1", "train/loss", "data/bad_samples"):
        assert [m.step for m in c.get_metric_history(out["run_id"], key)] == [1, 2, 3, 4], key
    assert [m.step for m in c.get_metric_history(out["run_id"], "model/params")] == [0]
    assert "checkpoint/model.safetensors" in {a.path for a in c.list_artifacts(out["run_id"], "checkpoint")}

    reg = last_json(actionlab(env, "register", out["run_id"], "--name", "faulty-motion", "--json").stdout)
    mv = c.get_model_version_by_alias("faulty-motion", "champion")
    assert reg["version"] == str(mv.version) == "1" and mv.run_id == out["run_id"]
    final_top1 = c.get_metric_history(out["run_id"], "val/top1")[-1].value
    assert float(mv.tags["top1"]) == pytest.approx(final_top1) == pytest.approx(out["val/top1"])
    assert mv.tags["workload"] == "tsm" and mv.tags["frames"] == "4"
    assert mv.tags["checkpoint"] == str(storage / "epoch_0004")
    _assert_registered_weights_are(mv, storage / "epoch_0004", not_those_of=storage / "epoch_0003",
                                   tracking_uri=tracking_uri(env), dst=tmp_path / "registered")
    video = str(synth_dataset.parent / "videos" / sorted(os.listdir(synth_dataset.parent / "videos"))[0])
    preds = json.loads(actionlab(env, "predict", "--model", "models:/faulty-motion@champion", video, "--json").stdout)
    assert preds[0]["video"] == video and len(preds[0]["top"]) >= 1


def _assert_registered_weights_are(mv, checkpoint: Path, *, not_those_of: Path, tracking_uri: str, dst: Path) -> None:
    """The registered safetensors hold exactly the model of Ray checkpoint `checkpoint` (and differ from
    `not_those_of`, so the comparison can tell checkpoints apart)."""
    import mlflow
    import torch
    from safetensors.torch import load_file

    # A models:/m-... source resolves through the process's tracking URI, not the `tracking_uri` argument
    # (and an URI set earlier in this process wins over the environment variable).
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst),
                                                             tracking_uri=tracking_uri))
    finally:
        mlflow.set_tracking_uri(previous)
    assert (model_dir / "MLmodel").is_file()  # an MLflow model; the checkpoint is its artifact
    registered = load_file(str(model_dir / "artifacts" / "checkpoint" / "model.safetensors"))

    def model_of(ckpt: Path) -> dict:
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)["model"]

    final = model_of(checkpoint)
    assert registered.keys() == final.keys()
    assert all(torch.equal(registered[k], final[k]) for k in final), f"registered weights are not {checkpoint.name}'s"
    earlier = model_of(not_those_of)
    assert not all(torch.equal(registered[k], earlier[k]) for k in earlier)
