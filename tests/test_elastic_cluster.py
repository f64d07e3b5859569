"""A lost node on the multi-node test cluster (`servers.cluster`): S3 data and checkpoints, an MLflow
server, `actionlab train` driven as a user would, node2 SIGKILLed by its raylet's PID mid-run.

- `compute.min_workers=1` of 2: the run resumes from its last checkpoint on the one worker left, keeps
  the global batch by accumulation, scales back to 2 when a node joins, and finishes every epoch with
  one MLflow value per metric and step.
- A fixed size of 2 with `compute.resize_timeout_s=20`: the run fails within about that time, naming
  the missing resources and the lost node, instead of minutes of worker-group start-up timeouts.

Each test prints what the fault cost (kill to resumed training; kill to failure).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers.process import MARKER_ENV, base_env, kill_driver

from actionlab.data import synthetic

pytestmark = pytest.mark.integration

TINY = ["--set", "clip.num_frames=4", "--set", "clip.size_px=32", "--set", "clip.resize_px=32",
        "--set", "data.batch_size=2", "--set", "data.num_loader_workers=0", "--set", "compute.cpus_per_worker=1",
        "--set", "compute.num_workers=2", "--set", "schedule.warmup_epochs=0"]


@pytest.fixture(scope="module")
def s3_motion(s3_server, tmp_path_factory):
    """A motion set of 48 training clips on S3 (12 steps per worker and epoch on two workers)."""
    local = tmp_path_factory.mktemp("elastic-data")
    synthetic.synthesize(local, num_classes=4, videos_per_class=16, num_frames=8, size_px=32, seed=0, num_procs=1)
    bucket = s3_server.make_bucket("elastic")
    up = subprocess.run([sys.executable, "-m", "actionlab", "data", "upload", str(local), f"{bucket}/motion"],
                        env=base_env(ACTIONLAB_HOME=str(local / "home"), **s3_server.env), capture_output=True,
                        text=True, timeout=300)
    assert up.returncode == 0, up.stderr[-3000:]
    return f"{bucket}/motion/manifest.parquet"


class Driver:
    """`actionlab train` in the background, its output in a file the test reads as it grows."""

    def __init__(self, argv: list[str], env: dict, log: Path, marker: str):
        self.log_path, self.marker = log, marker
        self._log = open(log, "w")
        self.proc = subprocess.Popen(argv, env={**env, MARKER_ENV: marker}, stdout=self._log,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.started = time.monotonic()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, what, *, timeout: float, after: int = 0) -> float:
        """Waits until `what` (a regex, or a callable) holds; returns the time. The driver must be alive."""
        deadline = time.monotonic() + timeout
        while True:
            if callable(what) and what():
                return time.monotonic()
            if isinstance(what, str) and re.search(what, self.text()[after:]):
                return time.monotonic()
            assert self.proc.poll() is None, f"driver exited ({self.proc.returncode}) waiting for {what}:\n" + \
                self.text()[-6000:]
            assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}\n" + self.text()[-6000:]
            time.sleep(0.5)

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            kill_driver(self.proc, self.marker)
            self._log.close()


def _env(cluster, s3_server, mlflow_server) -> dict:
    return {**cluster.env, **s3_server.env, "RAY_ADDRESS": cluster.address,
            "MLFLOW_TRACKING_URI": mlflow_server.url, "ACTIONLAB_SYSTEM_METRICS": "0"}


def _argv(manifest: str, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "actionlab", "train", "smoke", "--set", f"data.manifest={manifest}",
            "--set", "storage.uri=s3://elastic/runs", "--set", f"tracking.run_name={name}",
            "--set", "tracking.experiment=elastic", *TINY, *extra, "--json"]


def _checkpoint_registered(s3_server, name: str, dir_name: str):
    def check() -> bool:
        try:
            body = s3_server.client().get_object(Bucket="elastic", Key=f"runs/{name}/checkpoint_manager_snapshot.json")
        except Exception:  # noqa: BLE001 - not written yet
            return False
        snapshot = json.loads(body["Body"].read())
        return (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name", "") >= dir_name

    return check


def test_a_lost_node_is_survived_and_the_run_scales_back(ray_cluster, s3_server, mlflow_server, s3_motion, tmp_path):
    cluster = ray_cluster
    epochs = 12  # ~10 s each on one worker: room for a node to start on a loaded machine and join
    name = "elastic-kill"
    node2 = next(n for n in cluster.nodes if n.name == "node2")
    driver = Driver(_argv(s3_motion, name, "--set", "compute.min_workers=1", "--set", "compute.resize_check_s=5",
                          "--set", f"schedule.epochs={epochs}"),
                    _env(cluster, s3_server, mlflow_server), tmp_path / "driver.log", "elastic-kill")
    try:
        driver.wait_for("world size 2 of 2 workers", timeout=240)
        t_run = driver.wait_for(_checkpoint_registered(s3_server, name, "epoch_0001"), timeout=240)
        mark = len(driver.text())
        t_kill = time.monotonic()
        cluster.remove_node(node2)  # SIGKILL: raylet, then every process of the node
        t_resumed = driver.wait_for(r"resumed from checkpoint at epoch [1-9]", timeout=180, after=mark)
        driver.wait_for("world size 1 of 2 workers", timeout=60, after=mark)
        resumed_line = re.search(r"resumed from checkpoint at epoch (\d+)/", driver.text()[mark:])
        print(f"\nfault cost, min_workers=1: kill to resumed training on 1 worker {t_resumed - t_kill:.1f} s "
              f"(first checkpoint {t_run - driver.started:.1f} s after launch)")

        mark = len(driver.text())
        t_add = time.monotonic()
        cluster.add_node(num_cpus=1)  # capacity returns: the run goes back to 2 workers
        t_up = driver.wait_for("world size 2 of 2 workers", timeout=180, after=mark)
        print(f"node added to training on 2 workers again: {t_up - t_add:.1f} s")
        rc = driver.finish(timeout=400)
    except BaseException:
        kill_driver(driver.proc, driver.marker)
        raise
    text = driver.text()
    assert rc == 0, text[-6000:]
    out = json.loads(next(line for line in reversed(text.splitlines()) if line.startswith("{")))
    assert out["epoch"] == epochs and out["run_name"] == name
    assert int(resumed_line.group(1)) >= 1, "restarted from scratch, not from a checkpoint"

    c = mlflow_server.client()
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["compute.min_workers"] == "1"
    for key in ("train/loss", "val/top1", "train/world_size", "train/lr"):
        steps = [m.step for m in c.get_metric_history(out["run_id"], key)]
        assert steps == list(range(1, epochs + 1)), (key, steps)  # one value per epoch: redone ones not again
    world, accum = ([int(m.value) for m in sorted(c.get_metric_history(out["run_id"], key), key=lambda m: m.step)]
                    for key in ("train/world_size", "train/accum_steps"))
    print(f"world size per epoch: {world}; accumulation steps: {accum}")
    assert world[0] == 2 and 1 in world and 2 in world[world.index(1):], world  # 2 -> 1 -> 2
    assert all(a == 2 // w for w, a in zip(world, accum))  # global batch 2 x 2 clips on either size
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket="elastic", Prefix=f"runs/{name}/")["Contents"]}
    assert f"runs/{name}/epoch_{epochs:04d}/state.pt" in keys


def test_a_fixed_size_run_fails_soon_naming_what_is_missing(ray_cluster, s3_server, mlflow_server, s3_motion,
                                                            tmp_path):
    cluster = ray_cluster
    name = "fixed-kill"
    node2 = next(n for n in cluster.nodes if n.name == "node2")
    driver = Driver(_argv(s3_motion, name, "--set", "compute.resize_timeout_s=20", "--set", "schedule.epochs=6"),
                    _env(cluster, s3_server, mlflow_server), tmp_path / "driver.log", "fixed-kill")
    try:
        driver.wait_for(_checkpoint_registered(s3_server, name, "epoch_0001"), timeout=240)
        t_kill = time.monotonic()
        cluster.remove_node(node2)
        rc = driver.finish(timeout=150)
        cost = time.monotonic() - t_kill
    except BaseException:
        kill_driver(driver.proc, driver.marker)
        raise
    text = driver.text()
    print(f"\nfault cost, fixed size 2, resize_timeout_s=20: kill to failure {cost:.1f} s")
    assert rc == 2, text[-6000:]
    error = next(line for line in text.splitlines() if line.startswith("actionlab: error:"))
    print(error)
    assert "the run needs 2 workers x {CPU: 1} (compute.num_workers=2)" in error
    assert "after node node2 was lost" in error and "compute.resize_timeout_s=20" in error
    assert "Set compute.min_workers=1 to go on with fewer workers" in error
    assert cost < 20 + 60, f"the run took {cost:.0f} s to give up"
    runs = mlflow_server.client().search_runs(
        [mlflow_server.client().get_experiment_by_name("elastic").experiment_id], f"attributes.run_name = '{name}'")
    assert runs[0].info.status == "FAILED" and "needs 2 workers" in runs[0].data.tags["actionlab.error"]
