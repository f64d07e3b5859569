"""Training on a Ray cluster of two nodes, each with a disk of its own (`servers.cluster`): the default,
node-local settings are refused before compute, and with S3 data and checkpoints and an MLflow server
the run uses workers on both nodes and records everything in the one MLflow store."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from servers.process import actionlab, last_json

pytestmark = pytest.mark.integration

# The smoke recipe at its smallest: 2 epochs of 4-frame 32 px clips, decoded in the worker itself.
FAST = ["--set", "schedule.epochs=2", "--set", "clip.num_frames=4", "--set", "clip.size_px=32",
        "--set", "clip.resize_px=32", "--set", "data.batch_size=4", "--set", "data.num_loader_workers=0"]
TWO_WORKERS = ["--set", "compute.num_workers=2", "--set", "compute.cpus_per_worker=1"]
TRAIN_ACTORS = ("TrainController", "RayTrainWorker")








def _node_local_dataset(cluster, synth_dataset: Path, name: str) -> Path:
    """A per-test folder under the cluster's node-local folder (node2 sees an empty tmpfs there) with a copy
    of the synthetic dataset; returns the folder."""
    work = cluster.local_dir / name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(synth_dataset.parent, work / "motion")
    return work


def _train_actors(cluster) -> int:
    """Train controllers and workers the cluster has ever listed (dead ones included)."""
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.dashboard_url, limit=10000, raise_on_missing_output=False)
    return sum(1 for a in actors if a.class_name in TRAIN_ACTORS)


@pytest.mark.parametrize("command", ["train", "tune", "prepare"])
def test_node_local_defaults_are_refused_before_compute(ray_cluster, synth_dataset, command):
    cluster = ray_cluster
    work = _node_local_dataset(cluster, synth_dataset, f"refuse-{command}")
    home = work / "home"
    env = dict(cluster.env, RAY_ADDRESS=cluster.address, ACTIONLAB_HOME=str(home))
    manifest = work / "motion" / "manifest.parquet"
    args = {
        "train": ["train", "smoke", "--set", f"data.manifest={manifest}", *TWO_WORKERS, *FAST],
        "tune": ["tune", "tsm_lr_wd", "--set", f"data.manifest={manifest}", *TWO_WORKERS, *FAST],
        "prepare": ["data", "prepare", str(manifest), str(work / "prepared")],
    }[command]
    actors_before = _train_actors(cluster)

    start = time.monotonic()
    proc = actionlab(env, *args, timeout=300, check=False)
    seconds = time.monotonic() - start
    print(f"{command} refused in {seconds:.1f}s")

    assert proc.returncode == 2, f"expected a refusal:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    err = proc.stderr
    assert "actionlab: error:" in err and "this Ray cluster has 2 alive nodes" in err, err[-4000:]
    assert "a worker on another node reads and writes that node's disk" in err
    assert "Traceback" not in err
    if command == "prepare":
        assert f"- --root = {manifest.parent} (default: the manifest's folder)" in err
        assert f"- OUT = {work / 'prepared'}" in err and "declare it with --shared-fs" in err
        assert not (work / "prepared").exists(), "data prepare wrote its output before it was refused"
    else:
        for line in (f"- data.manifest = {manifest}", f"- data.root = {manifest.parent}",
                     f"- data.classes = {manifest.parent / 'classes.txt'}",
                     f"- storage.uri = {home / 'runs'} (default: under ACTIONLAB_HOME)",
                     f"- MLFLOW_TRACKING_URI = sqlite:///{home / 'mlflow.db'} (not set"):
            assert line in err, f"{line!r} missing from:\n{err[-4000:]}"
        assert "s3://BUCKET/runs" in err and "actionlab mlflow-server" in err
        assert "--set storage.shared_fs=true" in err
    # Nothing happened: no MLflow store (so no run, no sweep parent run), no checkpoint folder, no Train
    # controller or worker anywhere on the cluster, and it took the time of a driver's start-up only.
    assert not (home / "mlflow.db").exists(), "an MLflow store was created before the refusal"
    assert not (home / "runs").exists()
    assert _train_actors(cluster) == actors_before, "a Train controller or worker was started"
    # Measured 11-58 s on a loaded 2-core machine, nearly all of it importing torch and timm; a run that
    # got as far as starting its workers on both nodes takes minutes (the issue: until max_failures ran out).
    assert seconds < 180, f"the refusal took {seconds:.0f}s: it should come before any worker starts"


def test_s3_data_checkpoints_and_an_mlflow_server_train_on_two_nodes_into_one_store(
        ray_cluster, s3_server, mlflow_server, synth_dataset):
    from ray.util.state import list_nodes

    cluster = ray_cluster
    work = cluster.local_dir / "two-nodes"  # node-local: the state folder may be, nothing must land in it
    shutil.rmtree(work, ignore_errors=True)
    home = work / "home"
    bucket = s3_server.make_bucket("cluster-train")
    env = dict(cluster.env, RAY_ADDRESS=cluster.address, ACTIONLAB_HOME=str(home),
               MLFLOW_TRACKING_URI=mlflow_server.url, **s3_server.env)
    actionlab(env, "data", "upload", str(synth_dataset.parent), f"{bucket}/motion")

    start = time.monotonic()
    train = actionlab(env, "train", "smoke", "--set", f"data.manifest={bucket}/motion/manifest.parquet",
                      "--set", f"storage.uri={bucket}/runs", "--set", "tracking.experiment=two-nodes",
                      *TWO_WORKERS, *FAST, "--register", "two-nodes-motion", "--json")
    print(f"2-node training took {time.monotonic() - start:.1f}s")
    out = last_json(train.stdout)
    assert out["epoch"] == 2

    # The workers ran on two different nodes: the head and node2, as the run's tag (written by rank 0
    # after gathering every rank's Ray node id) says, checked against the cluster's own node list.
    c = mlflow_server.client()
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    workers = run.data.tags["actionlab.worker_nodes"].split(",")  # Ray node ids, rank order
    alive = {n.node_name: n.node_id for n in list_nodes(address=cluster.dashboard_url, limit=10000,
                                                        raise_on_missing_output=False) if n.state == "ALIVE"}
    assert sorted(workers) == sorted([alive["head"], alive["node2"]]), (workers, alive)

    # Everything is in the one MLflow server store: the config, every metric of every epoch, the
    # checkpoint artifact and the final checkpoint's tag; the checkpoint itself is on S3.
    assert run.data.params["data.manifest"] == f"{bucket}/motion/manifest.parquet"
    assert run.data.params["compute.num_workers"] == "2" and run.data.params["storage.uri"] == f"{bucket}/runs"
    artifacts = {a.path for a in c.list_artifacts(out["run_id"])}
    assert "config.yaml" in artifacts
    assert "checkpoint/model.safetensors" in {a.path for a in c.list_artifacts(out["run_id"], "checkpoint")}
    metrics = {k: v for k, v in out.items() if "/" in k and isinstance(v, (int, float))}
    assert {"train/loss", "val/top1", "val/top5"} <= set(metrics)
    for key, value in metrics.items():
        assert run.data.metrics[key] == pytest.approx(value), key
    for key in ("train/loss", "val/top1"):
        assert sorted(m.step for m in c.get_metric_history(out["run_id"], key)) == [1, 2], key
    final = f"{bucket}/runs/{out['run_name']}/epoch_0002"
    assert run.data.tags["actionlab.checkpoint"] == final
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket="cluster-train",
                                                                 Prefix="runs/")["Contents"]}
    assert f"runs/{out['run_name']}/epoch_0002/state.pt" in keys
    assert not (home / "mlflow.db").exists(), "something logged to an embedded store on the driver's node"

    # The registered version loads back from the server's registry and predicts.
    assert out["registered"]["name"] == "two-nodes-motion"
    video = f"{bucket}/motion/" + sorted(o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket="cluster-train", Prefix="motion/videos/")["Contents"])[0].removeprefix("motion/")
    version = out["registered"]["version"]
    preds = last_json(actionlab(env, "predict", "--model", f"models:/two-nodes-motion/{version}", video,
                                "--json", timeout=300).stdout)
    assert preds[0]["video"] == video and len(preds[0]["top"]) >= 1
