"""Sweep files are validated before anything runs; a real ASHA sweep tracks parent/child runs."""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

import tune_spaces
from actionlab.config import ConfigError, resolve
from actionlab.tune.space import load_sweep, param_space
from actionlab.tune.sweep import pareto_front, trials_that_fit
from servers.process import MARKER_ENV, base_env, kill_driver, pids_with_env, reap_marked

needs_netns = pytest.mark.skipif(
    not os.environ.get("ACTIONLAB_TEST_NETNS"),
    reason="starts Ray: run through scripts/test.sh (as root) so Ray is confined to a private network namespace",
)


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


def test_a_trial_merges_sampled_values_as_values():
    from actionlab.config import load_recipe
    from actionlab.tune.sweep import trial_config

    sampled = {"data.flip": "off", "clip.scales": [1.0, 0.5], "workload.params.fold_div": 4, "optim.lr": 1e-3,
               "tracking.experiment": "yes"}  # YAML text would read a bare off / yes as booleans
    cfg = trial_config(load_recipe("smoke"), {"schedule.epochs": 2}, sampled, "sweep-t1")
    assert (cfg.data.flip, cfg.clip.scales, cfg.workload.params.fold_div) == ("off", (1.0, 0.5), 4)
    assert (cfg.optim.lr, cfg.tracking.experiment, cfg.schedule.epochs) == (1e-3, "yes", 2)
    assert cfg.tracking.run_name == "sweep-t1"


def test_pareto_front_keeps_undominated_points():
    points = [("a", 1.0, 0.5), ("b", 2.0, 0.7), ("c", 2.0, 0.6), ("d", 3.0, 0.7), ("e", 0.5, 0.2)]
    assert sorted(pareto_front(points)) == ["a", "b", "e"]


def test_trials_that_fit_explains_itself():
    cfg = resolve({}, ["compute.num_workers=2", "compute.cpus_per_worker=1.5", "compute.use_gpu=false"])
    fit, why = trials_that_fit(cfg, {"CPU": 8})
    assert fit == 2 and "3 CPU" in why and "8 CPU" in why
    gpu = resolve({}, ["compute.num_workers=2"])
    assert trials_that_fit(gpu, {"CPU": 64, "GPU": 4})[0] == 2


def test_trials_that_fit_counts_the_workers_each_node_holds():
    cfg = resolve({}, ["compute.num_workers=1", "compute.cpus_per_worker=1", "compute.use_gpu=false"])
    assert trials_that_fit(cfg, [{"CPU": 1}, {"CPU": 1}])[0] == 2
    fit, why = trials_that_fit(cfg, [{"CPU": 1.5}, {"CPU": 1.5}])  # 3 CPUs in all, but no worker spans nodes
    assert fit == 2 and "hold 2 such workers" in why
    two = resolve({}, ["compute.num_workers=2", "compute.cpus_per_worker=1", "compute.use_gpu=false"])
    assert trials_that_fit(two, [{"CPU": 1}, {"CPU": 1}, {"CPU": 1}])[0] == 1  # a run's workers may span nodes


def test_grids_multiply_the_number_of_trials(tmp_path):
    from actionlab.tune.space import num_trials

    assert num_trials(load_sweep("afnet_rt")) == 4
    spec = load_sweep(str(write_sweep(tmp_path, num_samples=3,
                                      space={"optim.lr": {"grid_search": [1e-3, 3e-3]}})))
    assert num_trials(spec) == 6


def tiny_sweep(tmp_path, synth_dataset, **changes) -> Path:
    """A sweep of 3-epoch CPU trials on the tiny motion set, over three learning rates."""
    return write_sweep(
        tmp_path,
        overrides={"data.manifest": str(synth_dataset), "schedule.epochs": 3, "clip.num_frames": 4,
                   "clip.size_px": 32, "clip.resize_px": 32, "data.batch_size": 4, "data.num_loader_workers": 0,
                   "compute.cpus_per_worker": 1, "tracking.experiment": "sweeps"},
        num_samples=3,
        space={"optim.lr": {"choice": [1e-4, 1e-3, 3e-3]}},
        **changes,
    )


def sweep_env(home: Path, **extra) -> dict:
    return base_env(ACTIONLAB_HOME=str(home), RAY_TMPDIR=tempfile.mkdtemp(prefix="rs", dir="/tmp"), **extra)


def mlflow_client(home: Path):
    import mlflow

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.mark.integration
@needs_netns
def test_asha_sweep_tracks_parent_children_plot_and_registers(tmp_path, synth_dataset, ray_address):
    home = tmp_path / "home"
    space = tiny_sweep(tmp_path, synth_dataset, scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2})
    env = sweep_env(home, RAY_ADDRESS=ray_address)
    proc = subprocess.run([sys.executable, "-m", "actionlab", "tune", str(space), "--register", "swept", "--json"],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "3 trials, 2 at a time" in proc.stdout
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["trials"]) == 3
    assert {t["status"] for t in out["trials"]} <= {"completed", "early-stopped"}
    assert out["best"]["status"] == "completed" and out["best"]["epochs"] == 3
    assert out["pareto_front"]

    c = mlflow_client(home)
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


def _children(c, experiment: str = "sweeps") -> list:
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string="tags.`actionlab.trial_id` != ''")


@pytest.mark.integration
@needs_netns
def test_killed_sweep_driver_restores_without_rerunning_finished_trials(tmp_path, synth_dataset):
    """SIGKILL the `actionlab tune` driver after a trial finished and while the next one trains, then
    rerun the same command: the sweep is restored, finished trials are kept as they were (same MLflow
    child runs, untouched), the interrupted one resumes into its own child run, every trial completes."""
    home = tmp_path / "home"
    space = tiny_sweep(tmp_path, synth_dataset, scheduler={"name": "fifo"}, max_concurrent_trials=1)
    argv = [sys.executable, "-m", "actionlab", "tune", str(space), "--json"]
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(argv, env=sweep_env(home, **{MARKER_ENV: "killed"}), stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while "trials, 1 at a time" not in log_path.read_text():  # the parent run exists: MLflow's DB too
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "the sweep did not start"
            time.sleep(1)
        c = mlflow_client(home)
        while True:
            assert driver.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "no trial finished while another was one epoch in"
            children = _children(c)
            finished = [r for r in children if r.info.status == "FINISHED"]
            running = [r for r in children if r.info.status == "RUNNING"
                       and c.get_metric_history(r.info.run_id, "val/top1")]
            if finished and running:
                break
            time.sleep(1)
    finally:
        left_after_kill = kill_driver(driver, "killed")
    before = {r.data.tags["actionlab.trial_id"]: r for r in finished}
    histories = {tid: [(m.step, m.value, m.timestamp) for m in c.get_metric_history(r.info.run_id, "val/top1")]
                 for tid, r in before.items()}
    interrupted = running[0]

    try:
        proc = subprocess.run(argv, env=sweep_env(home, **{MARKER_ENV: "rerun"}), capture_output=True, text=True,
                              timeout=1500)
    finally:
        reap_marked("rerun", settle_s=10)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["restored"] and "restoring sweep" in proc.stdout
    assert [t["status"] for t in out["trials"]] == ["completed"] * 3
    assert all(t["epochs"] == 3 for t in out["trials"])

    parent = c.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = _children(c)
    assert sorted(r.data.tags["actionlab.trial_id"] for r in children) == sorted(t["trial_id"] for t in out["trials"])
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert len(c.search_runs([c.get_experiment_by_name("sweeps").experiment_id])) == 4, "parent + one run per trial"
    by_trial = {r.data.tags["actionlab.trial_id"]: r for r in children}
    for tid, run in before.items():  # kept, not rerun: same run, same end, the very same metric values
        after = by_trial[tid]
        assert after.info.run_id == run.info.run_id and after.info.end_time == run.info.end_time
        assert [(m.step, m.value, m.timestamp) for m in c.get_metric_history(run.info.run_id, "val/top1")] \
            == histories[tid]
    assert by_trial[interrupted.data.tags["actionlab.trial_id"]].info.run_id == interrupted.info.run_id
    for run in children:
        assert run.info.status == "FINISHED"
        for key in ("val/top1", "train/loss"):
            assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == [1, 2, 3], (key, run.info.run_id)
    assert not pids_with_env(MARKER_ENV, "killed")
    print(f"Ray processes of the killed driver still alive 30 s after the kill (then killed): {left_after_kill}")


# A Tune trial whose Train run is already complete: its workers finished after the driver died.
_RESTORED_TRIAL = """
import json, sys
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from actionlab.config import load_recipe, resolve
from actionlab.cluster import init_ray
from actionlab.train.launch import train

overrides = json.loads(sys.argv[1])

def trainable(config):
    train(resolve(load_recipe("smoke"), overrides), callbacks=(TuneReportCallback(),))

init_ray()
grid = ray.tune.Tuner(ray.tune.with_resources(trainable, {"CPU": 0.01}), run_config=ray.tune.RunConfig(name="restored", storage_path=sys.argv[2])).fit()
print(json.dumps({k: v for k, v in grid[0].metrics.items() if k in ("epoch", "val/top1")}))
"""


@pytest.mark.integration
@needs_netns
def test_a_trial_on_a_train_run_that_finished_without_its_driver_still_reports_its_result(tmp_path, synth_dataset,
                                                                                          ray_address):
    """The driver of a trial dies after its Train workers wrote their last checkpoint (the workers outlive
    it; found when a killed sweep was restored): the restored trial resumes a run with no epoch left, and
    must still give Tune the run's last result (it ended with none, counted as stopped after epoch 0)."""
    home = tmp_path / "home"
    env = sweep_env(home, RAY_ADDRESS=ray_address)
    overrides = [f"data.manifest={synth_dataset}", "schedule.epochs=2", "clip.num_frames=4", "clip.size_px=32",
                 "clip.resize_px=32", "data.batch_size=4", "data.num_loader_workers=0", "compute.cpus_per_worker=1",
                 "tracking.run_name=outlived"]
    proc = subprocess.run([sys.executable, "-m", "actionlab", "train", "smoke",
                           *[a for o in overrides for a in ("--set", o)], "--json"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    first = json.loads(proc.stdout.strip().splitlines()[-1])
    c = mlflow_client(home)
    c.update_run(first["run_id"], status="RUNNING")  # as its dead driver left it

    proc = subprocess.run([sys.executable, "-c", _RESTORED_TRIAL, json.dumps(overrides), str(tmp_path / "tune")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "resumed from checkpoint at epoch 2/2" in proc.stdout + proc.stderr
    reported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reported == {"epoch": 2, "val/top1": pytest.approx(first["val/top1"])}
    run = c.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(first["run_id"], "val/top1")] == [1, 2], "nothing logged twice"


def test_errored_trials_left_running_end_failed_with_the_trial_error(tmp_path, monkeypatch):
    """A trial lost with its node after its last retry never closes its child run: the sweep does."""
    from actionlab import tracking
    from actionlab.tune.sweep import _close_children

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = tracking.start_run("sweeps", "s")
    lost = tracking.start_run("sweeps", "s-t0", parent_run_id=parent, tags={"actionlab.trial_id": "t0"})
    failed = tracking.start_run("sweeps", "s-t1", parent_run_id=parent, tags={"actionlab.trial_id": "t1"})
    tracking.end_run(failed, "FAILED")
    tracking.set_tags(failed, {"actionlab.error": "its own error"})
    _close_children("sweeps", parent, [{"trial_id": "t0", "status": "error", "epochs": 1, "error": "ActorDiedError: node lost"},
                                       {"trial_id": "t1", "status": "error", "epochs": 0, "error": "the trial's"}])
    c = tracking.client()
    assert c.get_run(lost).info.status == "FAILED"
    assert c.get_run(lost).data.tags["actionlab.error"] == "ActorDiedError: node lost"
    assert c.get_run(failed).data.tags["actionlab.error"] == "its own error"  # train() closed it: kept as it was


def test_early_stopped_children_end_killed_whether_tune_killed_or_interrupted_them(tmp_path, monkeypatch):
    from actionlab import tracking
    from actionlab.tune.sweep import _close_children

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = tracking.start_run("sweeps", "s")
    runs = {}
    for trial, status in (("t0", "RUNNING"), ("t1", "FAILED"), ("t2", "FINISHED")):
        runs[trial] = tracking.start_run("sweeps", f"s-{trial}", parent_run_id=parent, tags={"actionlab.trial_id": trial})
        if status != "RUNNING":
            tracking.end_run(runs[trial], status)
    tracking.set_tags(runs["t1"], {"actionlab.error": "interrupted by Tune's stop"})
    table = [{"trial_id": "t0", "status": "early-stopped", "epochs": 1},
             {"trial_id": "t1", "status": "early-stopped", "epochs": 2},
             {"trial_id": "t2", "status": "completed", "epochs": 3}]
    _close_children("sweeps", parent, table)
    c = tracking.client()
    for trial, expected in (("t0", "KILLED"), ("t1", "KILLED"), ("t2", "FINISHED")):
        run = c.get_run(runs[trial])
        assert run.info.status == expected, trial
        assert "actionlab.error" not in run.data.tags
    assert c.get_run(runs["t1"]).data.tags["actionlab.early_stopped"] == "after epoch 2"
    assert [row["run_id"] for row in table] == [runs["t0"], runs["t1"], runs["t2"]]
