"""A Tune sweep on the multi-node test cluster (S3 data and checkpoints, an MLflow server): its trials
train on both nodes, and a node SIGKILLed under a trial leaves a sweep that finishes every trial, the
lost one resumed from its last Train checkpoint into its own child run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from servers.process import MARKER_ENV, kill_driver

pytestmark = pytest.mark.integration

EPOCHS = 3


def _node_ids(cluster) -> dict[str, str]:
    """Node name -> Ray node id of the cluster's alive nodes."""
    from ray.util.state import list_nodes

    nodes = list_nodes(address=cluster.dashboard_url, limit=10000, raise_on_missing_output=False)
    return {n.node_name: n.node_id for n in nodes if n.state == "ALIVE"}


def _children(c, experiment: str) -> list:
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string="tags.`actionlab.trial_id` != ''")


def _checkpointed(s3, bucket: str, run) -> bool:
    """True once Ray Train has recorded a checkpoint of the run (its checkpoint manager's snapshot)."""
    key = f"runs/{run.data.tags['actionlab.run_name']}/checkpoint_manager_snapshot.json"
    return s3.list_objects_v2(Bucket=bucket.removeprefix("s3://"), Prefix=key).get("KeyCount", 0) > 0


def _epochs_logged(c, run_id: str) -> list:
    return c.get_metric_history(run_id, "val/top1")


def test_sweep_places_trials_on_both_nodes_and_survives_a_node_kill(ray_cluster, s3_server, mlflow_server,
                                                                    synth_dataset, tmp_path):
    cluster = ray_cluster
    node2 = next(n for n in cluster.nodes if n.name == "node2")
    ids = _node_ids(cluster)
    # RAY_DEDUP_LOGS=0: every worker's "resumed from checkpoint" line reaches the driver's output.
    env = dict(cluster.env, RAY_ADDRESS=cluster.address, MLFLOW_TRACKING_URI=mlflow_server.url, RAY_DEDUP_LOGS="0",
               **s3_server.env)
    data = s3_server.make_bucket("sweep-cluster-data")
    ckpt = s3_server.make_bucket("sweep-cluster-ckpt")
    upload = subprocess.run([sys.executable, "-m", "actionlab", "data", "upload", str(synth_dataset.parent),
                             f"{data}/motion"], env=env, capture_output=True, text=True, timeout=300)
    assert upload.returncode == 0, upload.stderr[-3000:]

    experiment = "cluster-sweep"
    space = tmp_path / "cluster_sweep.yaml"
    space.write_text(yaml.safe_dump({
        "recipe": "smoke",
        "overrides": {"data.manifest": f"{data}/motion/manifest.parquet", "storage.uri": f"{ckpt}/runs",
                      "schedule.epochs": EPOCHS, "clip.num_frames": 4, "clip.size_px": 32, "clip.resize_px": 32,
                      "data.batch_size": 4, "data.num_loader_workers": 0, "compute.cpus_per_worker": 1,
                      "tracking.experiment": experiment},
        "metric": "val/top1", "mode": "max", "num_samples": 1,
        "scheduler": {"name": "fifo"},  # every trial runs to the end: the test is about the kill, not ASHA
        "space": {"optim.lr": {"grid_search": [1e-3, 3e-3]}},
    }))

    c = mlflow_server.client()
    s3 = s3_server.client()
    log_path = tmp_path / "sweep.log"
    start, start_wall = time.monotonic(), time.time()
    with open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "actionlab", "tune", str(space), "--json"],
                                  env={**env, MARKER_ENV: "cluster-sweep"}, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        # Both trials train at once, one on each 1-CPU node; kill node2 once the trial whose worker runs
        # there has an epoch logged. (The other trial's actor may be on node2 too: it is then lost as well.)
        deadline = time.monotonic() + 300
        while True:
            assert driver.poll() is None, log_path.read_text()[-6000:]
            assert time.monotonic() < deadline, f"no trial on each node with an epoch logged:\n{log_path.read_text()[-6000:]}"
            children = _children(c, experiment)
            placed = {r.info.run_id: r.data.tags.get("actionlab.worker_nodes", "").split(",") for r in children}
            lost = [r for r in children if ids["node2"] in placed[r.info.run_id] and r.info.status == "RUNNING"
                    and _epochs_logged(c, r.info.run_id) and _checkpointed(s3, ckpt, r)]
            if len(children) == 2 and {ids["head"], ids["node2"]} <= {n for v in placed.values() for n in v} and lost:
                break
            time.sleep(1)
        assert "2 trials, 2 at a time" in log_path.read_text()
        lost_run = lost[0]
        epochs_before = len(_epochs_logged(c, lost_run.info.run_id))
        assert epochs_before < EPOCHS
        names = {v: k for k, v in ids.items()}
        print("at the kill, trial -> worker nodes:", {r.data.tags["actionlab.trial_id"]: [names.get(n, n) for n in
              placed[r.info.run_id]] for r in children}, f"({time.monotonic() - start:.0f}s into the sweep)")
        killed_wall = time.time()
        cluster.remove_node(node2)  # SIGKILL: its raylet, then every process of the node
        rc = driver.wait(timeout=600)  # 132 s on a quiet machine; over 420 s at load 6
    finally:
        left = kill_driver(driver, "cluster-sweep")
    sweep_s = time.monotonic() - start
    output = log_path.read_text()
    assert rc == 0, output[-8000:]
    out = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
    assert not out["restored"]
    assert [t["status"] for t in out["trials"]] == ["completed"] * 2, out["trials"]
    assert all(t["epochs"] == EPOCHS for t in out["trials"])
    # The lost trial went on from a checkpoint it had written on node2, not from scratch.
    lost_name = lost_run.data.tags["actionlab.run_name"]
    resumed = [int(m) for m in re.findall(rf"run '{lost_name}': resumed from checkpoint at epoch (\d+)/", output)]
    assert resumed and min(resumed) >= 1, output[-8000:]

    parent = c.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert {"results.csv", "accuracy_vs_gmacs.png", "sweep.json"} <= {a.path for a in c.list_artifacts(parent.info.run_id)}
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 3, "one parent run and one child run per trial, none for a restarted trial"
    children = _children(c, experiment)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.data.tags["actionlab.trial_id"] for r in children) == sorted(t["trial_id"] for t in out["trials"])
    for run in children:
        assert run.info.status == "FINISHED", (run.info.run_id, run.data.tags.get("actionlab.error"))
        for key in ("val/top1", "train/loss"):
            assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == list(range(1, EPOCHS + 1)), key
    after = next(r for r in children if r.info.run_id == lost_run.info.run_id)
    # It trained on node2, then on the node that was left.
    assert after.data.tags["actionlab.worker_nodes"].split(",") == [ids["node2"], ids["head"]]
    stamps = sorted(m.timestamp / 1000 for m in _epochs_logged(c, lost_run.info.run_id))
    after_kill = [t for t in stamps if t > killed_wall]  # the epochs trained again after the kill
    recovered = f"{after_kill[0] - killed_wall:.0f}s" if after_kill else "(none left)"
    print(f"node2 killed {killed_wall - start_wall:.0f}s into the sweep, after {epochs_before} epoch(s) of trial "
          f"{after.data.tags['actionlab.trial_id']} were logged; it resumed from epoch {min(resumed)} and logged its "
          f"next epoch {recovered} after the kill; the sweep took {sweep_s:.0f}s in all; Ray processes reaped after "
          f"it: {left}")
