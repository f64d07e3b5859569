"""The pre-flight decision of `actionlab.cluster`: which settings a cluster of several nodes refuses as
node-local, what `storage.shared_fs` allows, and what the error says. The node count is given, as the
driver gets it from Ray (`alive_nodes()`); the integration tests (test_cluster_train.py) run it on a real
two-node cluster whose nodes have disks of their own."""

from __future__ import annotations

import pytest

from actionlab import cluster
from actionlab.config import resolve

S3_DATA = {"data.manifest": "s3://datasets/motion/manifest.parquet", "storage.uri": "s3://checkpoints/runs"}
SERVER = "http://10.0.0.5:5000"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A state folder of this test's own and the embedded MLflow store (no MLFLOW_TRACKING_URI)."""
    monkeypatch.setenv("ACTIONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def _refused(updates: dict, *, num_nodes: int = 2, storage_root: str = "") -> cluster.NodeLocalError | None:
    cfg = resolve({}, updates=updates)
    root = storage_root or cfg.storage.uri or "/state/runs"
    try:
        cluster.check_config(cfg, storage_root=root, num_nodes=num_nodes)
    except cluster.NodeLocalError as err:
        return err
    return None


def _settings(err: cluster.NodeLocalError) -> list[str]:
    return [loc.setting for loc in err.offending]


def test_defaults_are_refused_on_two_nodes_naming_every_setting_and_its_fix(home, tmp_path):
    manifest = tmp_path / "motion" / "manifest.parquet"
    err = _refused({"data.manifest": str(manifest)}, storage_root=str(home / "runs"))
    assert err is not None
    assert _settings(err) == ["data.manifest", "data.val_manifest", "data.root", "data.classes", "storage.uri",
                              "MLFLOW_TRACKING_URI"]
    text = str(err)
    assert "2 alive nodes" in text and "a worker on another node reads and writes that node's disk" in text
    assert f"- data.manifest = {manifest}\n" in text
    assert f"data.root = {manifest.parent} (default: the manifest's folder)" in text
    assert f"data.classes = {manifest.parent / 'classes.txt'} (default: beside data.manifest)" in text
    assert f"storage.uri = {home / 'runs'} (default: under ACTIONLAB_HOME)" in text
    assert f"MLFLOW_TRACKING_URI = sqlite:///{home / 'mlflow.db'} (not set: the embedded SQLite store" in text
    # the fixes: S3 for data and checkpoints, an MLflow server, or a declared shared file system
    assert "actionlab data upload DIR s3://BUCKET/PREFIX" in text
    assert "--set storage.uri=s3://BUCKET/runs" in text
    assert "actionlab mlflow-server" in text and "MLFLOW_TRACKING_URI=http://HOST:PORT" in text
    assert "--set storage.shared_fs=true" in text and "NFS" in text
    assert "nothing was started" in text


@pytest.mark.parametrize("num_nodes", [0, 1])
def test_one_node_keeps_the_zero_configuration_defaults(home, tmp_path, num_nodes):
    assert _refused({"data.manifest": str(tmp_path / "m.parquet")}, num_nodes=num_nodes,
                    storage_root=str(home / "runs")) is None


def test_s3_data_and_checkpoints_with_an_mlflow_server_pass(home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    assert _refused(S3_DATA, num_nodes=3) is None


def test_s3_data_alone_is_not_enough_checkpoints_and_mlflow_left_at_their_defaults_are_refused(home):
    # The issue's "worked by luck of placement" case: rank 0 on node 2 logs to node 2's own SQLite file.
    err = _refused({"data.manifest": S3_DATA["data.manifest"]}, storage_root=str(home / "runs"))
    assert _settings(err) == ["storage.uri", "MLFLOW_TRACKING_URI"]
    assert "data.manifest" not in str(err)


@pytest.mark.parametrize("uri", ["sqlite:////state/mlflow.db", "file:///state/mlruns", "/state/mlruns", "mlruns"])
def test_file_and_sqlite_tracking_stores_are_refused_when_set_explicitly(home, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    err = _refused(S3_DATA)
    assert _settings(err) == ["MLFLOW_TRACKING_URI"]
    assert f"- MLFLOW_TRACKING_URI = {uri}\nFix:\n  - MLflow: run `actionlab mlflow-server`" in str(err)


@pytest.mark.parametrize("uri", [SERVER, "https://mlflow.example.com", "postgresql://mlflow@db/mlflow",
                                 "databricks"])
def test_tracking_stores_every_node_reaches_pass(home, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert _refused(S3_DATA) is None


def test_each_node_local_data_setting_is_named_on_its_own(home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    cases = {"data.root": "/data/videos", "data.val_manifest": "/data/val.parquet", "data.classes": "/data/c.txt",
             "storage.uri": "/checkpoints", "workload.init_from": "/weights/tsm"}
    for setting, value in cases.items():
        err = _refused({**S3_DATA, setting: value})
        assert err is not None and _settings(err) == [setting], setting
        assert f"- {setting} = {value}\nFix:" in str(err)


def test_file_uris_are_local_paths(home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    err = _refused({**S3_DATA, "data.manifest": "file:///data/motion/manifest.parquet"})
    assert _settings(err) == ["data.manifest", "data.val_manifest", "data.root", "data.classes"]


def test_registry_weights_go_through_the_tracking_store(home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    assert _refused({**S3_DATA, "workload.init_from": "models:/tsm-motion/3"}) is None
    assert _refused({**S3_DATA, "workload.init_from": "s3://weights/tsm"}) is None


def test_shared_fs_accepts_local_paths_and_the_embedded_store(home, tmp_path):
    assert _refused({"data.manifest": str(tmp_path / "m.parquet"), "storage.shared_fs": True},
                    storage_root=str(home / "runs")) is None


def test_data_prepare_refuses_a_local_source_root_and_output_unless_shared(home):
    local = cluster.prepare_locations(root="/data/raw", out_root="/data/prepared",
                                      root_note="default: the manifest's folder")
    with pytest.raises(cluster.NodeLocalError) as caught:
        cluster.refuse_node_local(local, num_nodes=2, shared_fs=False, shared_fs_hint="--shared-fs")
    text = str(caught.value)
    assert _settings(caught.value) == ["--root", "OUT"]
    assert "--root = /data/raw (default: the manifest's folder)" in text
    assert "- OUT = /data/prepared\n" in text and "- output: write to s3://BUCKET/PREFIX" in text
    assert "declare it with --shared-fs" in text and "storage.shared_fs" not in text
    cluster.refuse_node_local(local, num_nodes=2, shared_fs=True)
    cluster.refuse_node_local(local, num_nodes=1, shared_fs=False)
    remote = cluster.prepare_locations(root="s3://raw/k400", out_root="s3://prepared/k400")
    cluster.refuse_node_local(remote, num_nodes=4, shared_fs=False)


def test_the_error_is_user_facing_in_the_cli():
    # The CLI prints RuntimeErrors as one `actionlab: error: ...` message, without a traceback.
    assert issubclass(cluster.NodeLocalError, RuntimeError)
