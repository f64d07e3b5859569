"""S3 storage against a real S3 endpoint on 127.0.0.1 (moto's server mode): retries, the read-through
video cache (URI + ETag keys, size limit), `actionlab data upload`, and the whole path from s3://
(recipe, manifest, videos) to s3:// checkpoints, MLflow artifacts proxied to S3, the registry and
`actionlab predict` on an s3:// video. No secret may reach MLflow, logs or printed config.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from actionlab import storage
from actionlab.data import decode

from servers.process import actionlab, base_env, last_json, needs_netns
from servers.s3 import SECRET_KEY

FAST = ["--set", "schedule.epochs=2", "--set", "clip.num_frames=4", "--set", "clip.size_px=32",
        "--set", "clip.resize_px=32", "--set", "data.batch_size=4", "--set", "data.num_loader_workers=0"]


# --- retries (no server: a filesystem that fails on cue) ------------------------------------------


class FlakyFilesystem:
    """Stands in for a pyarrow S3 filesystem whose first `failures` reads fail with `error`."""

    def __init__(self, failures: int, error: Exception, data: bytes = b"payload"):
        self.failures, self.error, self.data, self.calls = failures, error, data, 0

    def open_input_stream(self, path):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return io.BytesIO(self.data)


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setattr(storage.retry, "_BACKOFF_S", 0.001)

    def install(fs):
        monkeypatch.setattr(storage, "resolve", lambda uri: (fs, "bkt/key"))
        return fs

    return install


def test_transient_errors_are_retried_with_backoff(flaky):
    fs = flaky(FlakyFilesystem(2, OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28")))
    assert storage.read_bytes("s3://bkt/key") == b"payload"
    assert fs.calls == 3


def test_retries_give_up_naming_the_uri(flaky, monkeypatch):
    monkeypatch.setenv(storage.MAX_ATTEMPTS_ENV, "3")
    fs = flaky(FlakyFilesystem(10, OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce rate")))
    with pytest.raises(OSError, match=r"read s3://bkt/key failed after 3 attempts"):
        storage.read_bytes("s3://bkt/key")
    assert fs.calls == 3


def test_permanent_errors_are_not_retried(flaky):
    fs = flaky(FlakyFilesystem(1, OSError("AWS Error ACCESS_DENIED during GetObject operation: Access Denied")))
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        storage.read_bytes("s3://bkt/key")
    assert fs.calls == 1


def test_transient_classification():
    assert storage.is_transient(OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce rate"))
    assert storage.is_transient(OSError("AWS Error UNKNOWN (HTTP status 503) during HeadObject operation"))
    assert storage.is_transient(OSError("AWS Error UNKNOWN (HTTP status 500) during GetObject operation"))
    assert not storage.is_transient(OSError("AWS Error ACCESS_DENIED (HTTP status 403) during HeadObject operation"))
    assert not storage.is_transient(FileNotFoundError("s3://b/k"))
    assert storage.is_transient(OSError("Connection reset by peer"))


def test_redact_hides_credentials_only():
    assert storage.redact("s3://AKIA:s3cret@bkt/data?endpoint_override=h:9000&secret_key=x") == \
        "s3://***@bkt/data?endpoint_override=h:9000&secret_key=***"
    assert storage.redact("http://user:pw@mlflow:5000") == "http://***@mlflow:5000"
    for plain in ("s3://bkt/data/m.parquet", "sqlite:////abs/mlflow.db", "/data/x", "models:/m@champion"):
        assert storage.redact(plain) == plain
    assert "pw" not in storage.redact_text("tracking: http://user:pw@mlflow:5000\nroot: s3://bkt/x")


# --- storage against the S3 endpoint ----------------------------------------------------------------


@needs_netns
def test_read_write_exists_and_missing_objects(s3):
    bucket = s3.make_bucket("unit-rw")
    storage.write_bytes(f"{bucket}/dir/a.txt", b"hello")
    assert storage.read_text(f"{bucket}/dir/a.txt") == "hello"
    assert storage.exists(f"{bucket}/dir") and storage.exists(f"{bucket}/dir/a.txt")
    assert not storage.exists(f"{bucket}/dir/b.txt")
    with pytest.raises(FileNotFoundError, match="s3://unit-rw/dir/b.txt"):
        storage.read_bytes(f"{bucket}/dir/b.txt")
    with pytest.raises(FileNotFoundError, match="s3://unit-rw/dir/b.mp4"):
        storage.local_copy(f"{bucket}/dir/b.mp4", "/tmp/unused-cache")


@needs_netns
def test_upload_dir_copies_a_dataset_as_is(s3, synth_dataset, tmp_path):
    bucket = s3.make_bucket("unit-upload")
    local = synth_dataset.parent
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    num_files, num_bytes = storage.upload_dir(local, f"{bucket}/motion")
    assert num_files == len(files) and num_bytes == sum((local / f).stat().st_size for f in files)
    listed = s3.client().list_objects_v2(Bucket="unit-upload", Prefix="motion/")["Contents"]
    assert sorted(o["Key"].removeprefix("motion/") for o in listed) == files
    assert storage.read_bytes(f"{bucket}/motion/manifest.parquet") == (local / "manifest.parquet").read_bytes()
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        storage.upload_dir(local, "s3://no-such-bucket/motion")


@needs_netns
def test_video_cache_is_keyed_by_etag_and_evicts_lru(s3, tmp_path, monkeypatch):
    bucket = s3.make_bucket("unit-cache")
    cache = tmp_path / "cache"
    storage.write_bytes(f"{bucket}/v/a.mp4", b"a" * 1000)
    first = storage.local_copy(f"{bucket}/v/a.mp4", cache)
    assert first.endswith(".mp4") and Path(first).read_bytes() == b"a" * 1000
    assert storage.local_copy(f"{bucket}/v/a.mp4", cache) == first  # a hit: no second copy

    # The object is replaced: a new ETag, so a new cache entry with the new bytes.
    storage.write_bytes(f"{bucket}/v/a.mp4", b"b" * 1000)
    monkeypatch.setattr(storage.cache, "_VERSION_TTL_S", 0.0)
    second = storage.local_copy(f"{bucket}/v/a.mp4", cache)
    assert second != first and Path(second).read_bytes() == b"b" * 1000

    # Size limit: 2500 bytes holds two 1000-byte videos; the least recently used goes first.
    storage.cache._cache_estimates.clear()
    for name in ("c", "d"):
        storage.write_bytes(f"{bucket}/v/{name}.mp4", name.encode() * 1000)
    os.utime(second, (1, 1))  # `second` is the least recently used, then `first`
    os.utime(first, (2, 2))
    c = storage.local_copy(f"{bucket}/v/c.mp4", cache, max_bytes=2500)
    assert not Path(second).exists() and Path(first).exists()
    d = storage.local_copy(f"{bucket}/v/d.mp4", cache, max_bytes=2500)
    kept = {p for p in map(str, cache.glob("*/*")) if not Path(p).name.startswith(".")}
    assert kept == {c, d}
    assert sum(Path(p).stat().st_size for p in kept) <= 2500
    assert storage.local_copy(f"{bucket}/v/a.mp4", cache, max_bytes=2500) == second  # fetched again on demand


@needs_netns
def test_video_cache_never_keeps_bytes_under_another_versions_etag(s3, tmp_path, monkeypatch):
    """An object replaced while it downloads: pyarrow's ranged reads return the new bytes (no If-Match),
    which must not be cached under the ETag looked up before the read."""
    import shutil

    bucket = s3.make_bucket("unit-race")
    uri, cache = f"{bucket}/v/a.mp4", tmp_path / "cache"
    storage.write_bytes(uri, b"a" * 1000)
    storage.object_version(uri, refresh=True)  # the ETag of the a's
    copy, replaced = shutil.copyfileobj, []

    def replace_then_copy(src, dst, *args):
        if not replaced:
            replaced.append(s3.client().put_object(Bucket="unit-race", Key="v/a.mp4", Body=b"b" * 1000))
        return copy(src, dst, *args)

    monkeypatch.setattr(storage.cache.shutil, "copyfileobj", replace_then_copy)
    assert Path(storage.local_copy(uri, cache)).read_bytes() == b"b" * 1000
    monkeypatch.setattr(storage.cache.shutil, "copyfileobj", copy)

    # Back to the a's (the same ETag as before): what is served is the a's, not the b's read under their ETag.
    storage.write_bytes(uri, b"a" * 1000)
    monkeypatch.setattr(storage.cache, "_VERSION_TTL_S", 0.0)
    assert Path(storage.local_copy(uri, cache)).read_bytes() == b"a" * 1000


# --- the whole path from and to S3 -------------------------------------------------------------------






@needs_netns
@pytest.mark.integration
def test_train_from_s3_checkpoint_to_s3_register_and_predict(s3_server, mlflow_server, synth_dataset, tmp_path,
                                                            ray_address):
    data_bucket = s3_server.make_bucket("datasets")
    ckpt_bucket = s3_server.make_bucket("checkpoints")
    env = base_env(ACTIONLAB_HOME=str(tmp_path / "home"), RAY_ADDRESS=ray_address,
                   MLFLOW_TRACKING_URI=mlflow_server.url, **s3_server.env)
    outputs = []

    upload = actionlab(env, "data", "upload", str(synth_dataset.parent), f"{data_bucket}/motion")
    outputs.append(upload)
    assert "uploaded" in upload.stdout and "s3://datasets/motion/manifest.parquet" in upload.stdout
    recipe = (Path(__file__).resolve().parents[1] / "workloads" / "recipes" / "smoke.yaml").read_bytes()
    s3_server.client().put_object(Bucket="datasets", Key="recipes/smoke.yaml", Body=recipe)

    train = actionlab(env, "train", f"{data_bucket}/recipes/smoke.yaml",
                       "--set", f"data.manifest={data_bucket}/motion/manifest.parquet",
                       "--set", f"storage.uri={ckpt_bucket}/runs", "--set", "tracking.experiment=s3-e2e",
                       *FAST, "--register", "motion-s3", "--json")
    outputs.append(train)
    out = last_json(train.stdout)
    assert out["epoch"] == 2 and out["checkpoints"] == f"s3://checkpoints/runs/{out['run_name']}"
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket="checkpoints")["Contents"]}
    assert f"runs/{out['run_name']}/epoch_0002/state.pt" in keys

    c = mlflow_server.client()
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert run.data.params["data.manifest"] == "s3://datasets/motion/manifest.parquet"
    artifact_keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket="mlflow-artifacts")["Contents"]}
    assert any(k.endswith(f"{out['run_id']}/artifacts/checkpoint/model.safetensors") for k in artifact_keys)
    mv = c.get_model_version_by_alias("motion-s3", "champion")
    assert mv.tags["checkpoint"] == f"s3://checkpoints/runs/{out['run_name']}/epoch_0002"

    video_key = sorted(k for k in (o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket="datasets", Prefix="motion/videos/")["Contents"]))[0]
    predict = actionlab(env, "predict", "--model", "models:/motion-s3@champion", f"s3://datasets/{video_key}",
                         "--json", timeout=300)
    outputs.append(predict)
    preds = last_json(predict.stdout)
    assert preds[0]["video"] == f"s3://datasets/{video_key}" and len(preds[0]["top"]) >= 1

    leaked = [t for t in [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(dict(mv.tags))]
              + [p.stdout + p.stderr for p in outputs] if SECRET_KEY in t]
    assert not leaked, "the AWS secret key showed up in MLflow or the command output"


# --- out of disk under the video cache ----------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs mounted on a temp dir (our own mount namespace: scripts/test.sh runs pytest in one)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: run through scripts/test.sh as root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _cached_videos(cache: Path) -> set[str]:
    return {p.name for p in cache.glob("*/*") if not p.name.startswith(".")}


@needs_netns
@pytest.mark.integration
def test_full_disk_under_the_cache_evicts_or_fails_naming_the_knob(s3, tiny_disk, monkeypatch):
    bucket = s3.make_bucket("unit-full-disk")
    videos = {name: os.urandom(300_000) for name in ("a", "b", "c", "d")}
    videos["big"] = os.urandom(950_000)
    for name, data in videos.items():
        storage.write_bytes(f"{bucket}/v/{name}.mp4", data)
    cache = tiny_disk / "cache"
    monkeypatch.setattr(storage.retry, "_BACKOFF_S", 0.01)

    # Three 300 kB videos fit on the 1 MiB disk; the limit (20 GB by default) is far above it.
    paths = {name: storage.local_copy(f"{bucket}/v/{name}.mp4", cache) for name in ("a", "b", "c")}
    for name, when in (("a", 1), ("b", 2), ("c", 3)):
        os.utime(paths[name], (when, when))  # a is the least recently used
    # The fourth hits ENOSPC on the real filesystem: the least recently used video makes room.
    d = storage.local_copy(f"{bucket}/v/d.mp4", cache)
    assert Path(d).read_bytes() == videos["d"]
    assert not Path(paths["a"]).exists() and Path(paths["b"]).exists() and Path(paths["c"]).exists()
    assert not list(cache.glob("*/.*.part")), "a download that hit ENOSPC left its partial file"

    # Something else takes the rest of the disk: evicting every cached video still leaves no room for a
    # 950 kB one, so a clear error.
    filler = tiny_disk / "someone-elses-file"
    with pytest.raises(OSError, match="No space left"):
        with open(filler, "wb") as f:
            f.write(b"\0" * (1 << 20))
    with pytest.raises(storage.CacheFullError) as err:
        storage.local_copy(f"{bucket}/v/big.mp4", cache)
    message = str(err.value)
    assert str(cache) in message and storage.CACHE_MAX_GB_ENV in message and "ACTIONLAB_HOME" in message
    assert "s3://unit-full-disk/v/big.mp4 needs 0.95 MB" in message
    assert _cached_videos(cache) == set(), "every cached video is evicted before giving up"
    assert not list(cache.glob("*/.*.part")), "a failed download left its partial file"

    # A dead download's leftover counts as reclaimable; nothing half-written is ever taken as a video.
    filler.unlink()
    stale = Path(paths["b"]).parent / f".{Path(paths['b']).stem}.dead.part"
    stale.write_bytes(os.urandom(900_000))
    os.utime(stale, (1, 1))
    again = storage.local_copy(f"{bucket}/v/a.mp4", cache)
    assert Path(again).read_bytes() == videos["a"] and not stale.exists()


def test_a_full_cache_disk_stops_the_run_instead_of_counting_bad_samples(monkeypatch):
    from actionlab.data import dataset

    def full(uri, cache_dir):
        raise storage.CacheFullError(28, f"the video cache {cache_dir} is out of disk space")

    monkeypatch.setattr(storage, "local_copy", full)
    with pytest.raises(storage.CacheFullError, match="/cache"):
        dataset.fetch_local("s3://bkt/v.mp4", "/cache")


@needs_netns
@pytest.mark.integration  # three outages of 2 s by design: the slowest test of the fast tier otherwise
def test_ray_storage_filesystem_waits_out_an_outage_and_pickles_as_its_uri(s3, monkeypatch):
    """What Ray's controller and workers write through (`ray_storage`) rides out an outage on every call,
    including a write that opens while the endpoint is away (the controller's checkpoint snapshot)."""
    import pickle
    from urllib.parse import urlsplit

    import pyarrow.fs as pafs

    from servers.s3 import OutageProxy

    bucket = s3.make_bucket("ray-fs")
    endpoint = urlsplit(s3.url)
    proxy = OutageProxy(endpoint.hostname, endpoint.port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(storage.retry, "_BACKOFF_S", 0.2)
    storage.retry._remote_filesystem.cache_clear()
    try:
        path, fs = storage.ray_storage(f"{bucket}/runs")
        assert path == "ray-fs/runs" and fs.type_name == "py::retrying+s3"
        fs = pickle.loads(pickle.dumps(fs))  # as Ray ships it to the controller and the workers
        proxy.on_request(b"POST /ray-fs/runs/snapshot.json?uploads", seconds=2)
        with fs.open_output_stream(f"{path}/snapshot.json") as out:
            out.write(b'{"epoch": 1}')
        big = os.urandom(3 << 20)
        proxy.on_request(b"/ray-fs/runs/epoch_0001/state.pt", seconds=2)
        pafs.copy_files("/dev/null", f"{path}/empty", destination_filesystem=fs)  # a threaded copy
        with fs.open_output_stream(f"{path}/epoch_0001/state.pt") as out:
            out.write(big)
        proxy.outage(2, "listing")
        listed = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    finally:
        proxy.stop()
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
        storage.retry._remote_filesystem.cache_clear()
    assert [why for why, _ in proxy.outages[:3]] == ["POST /ray-fs/runs/snapshot.json?uploads",
                                                     "/ray-fs/runs/epoch_0001/state.pt", "listing"]
    assert sorted(i.path for i in listed if i.is_file) == ["ray-fs/runs/empty", "ray-fs/runs/epoch_0001/state.pt",
                                                           "ray-fs/runs/snapshot.json"]
    assert storage.read_bytes(f"{bucket}/runs/snapshot.json") == b'{"epoch": 1}'
    assert storage.read_bytes(f"{bucket}/runs/epoch_0001/state.pt") == big
    assert storage.ray_storage("/tmp/runs") == ("/tmp/runs", None)


# --- the S3 endpoint goes away during a run -------------------------------------------------------------


@needs_netns
@pytest.mark.integration
def test_training_survives_an_s3_outage_during_reads_and_checkpoint_writes(s3, synth_dataset, tmp_path, ray_address):
    """The endpoint (a proxy in front of moto, whose state stays in memory) drops every connection and
    refuses new ones for 10 s when the loader asks for its first video, and again when epoch 2's
    checkpoint is uploaded (Ray's controller may write its checkpoint snapshot meanwhile: the same
    retrying filesystem covers it, see `test_ray_storage_filesystem_waits_out_an_outage...`). Both are
    waited out by retries (logged), with no restart: the run ends with every epoch, every sample, and a
    loadable last checkpoint.

    Without the retries (found here): the video lookup gave up after ~6 s, the video counted as a bad
    sample (1 of 16, above max_bad_fraction: a worker-group restart; on a bigger set it would have been
    silently skipped), and Ray's own upload gave up after ~3 s (the second restart, the last one
    `compute.max_failures=2` allows), resuming from epoch 1's checkpoint. When the controller's snapshot
    write met the outage, the whole run failed (a controller error, which no restart covers; seen in CI)."""
    from urllib.parse import urlsplit

    import torch

    from actionlab.train.resume import load_state
    from servers.s3 import OutageProxy
    from workloads import get_workload

    data_bucket, ckpt_bucket = s3.make_bucket("outage-data"), s3.make_bucket("outage-ckpt")
    storage.upload_dir(synth_dataset.parent, f"{data_bucket}/motion")
    endpoint = urlsplit(s3.url)
    proxy = OutageProxy(endpoint.hostname, endpoint.port)
    proxy.on_request(b"/outage-data/motion/videos/", seconds=10)
    proxy.on_request(b"/outage-ckpt/runs/s3-outage/epoch_0002/", seconds=10)
    home = tmp_path / "home"
    env = base_env(ACTIONLAB_HOME=str(home), RAY_ADDRESS=ray_address, **{**s3.env, "AWS_ENDPOINT_URL": proxy.url})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "actionlab", "train", "smoke", "--set",
             f"data.manifest={data_bucket}/motion/manifest.parquet", "--set", f"storage.uri={ckpt_bucket}/runs",
             "--set", "tracking.run_name=s3-outage", *FAST, "--set", "schedule.epochs=4", "--json"],
            env=env, capture_output=True, text=True, timeout=900)
    finally:
        proxy.stop()
    output = proc.stdout + proc.stderr
    (tmp_path / "train.log").write_text(output)
    assert [why for why, _ in proxy.outages[:2]] == ["/outage-data/motion/videos/",
                                                     "/outage-ckpt/runs/s3-outage/epoch_0002/"], proxy.outages
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    out = last_json(proc.stdout)
    assert out["epoch"] == 4 and out["checkpoints"] == "s3://outage-ckpt/runs/s3-outage"
    assert re.search(r"s3://outage-data/motion/videos/\S+ failed \(attempt 1/\d+\), retrying", output), output[-6000:]
    assert re.search(r"(create|write) s3://outage-ckpt/runs/s3-outage/epoch_0002\S* failed \(attempt 1/\d+\), retrying",
                     output), output[-6000:]
    assert "FailurePolicy" not in output and "resumed from checkpoint" not in output, "a worker-group restart"

    snapshot = json.loads(storage.read_text(f"{ckpt_bucket}/runs/s3-outage/checkpoint_manager_snapshot.json"))
    assert snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] == "epoch_0004"
    state_file = tmp_path / "state.pt"
    state_file.write_bytes(storage.read_bytes(f"{ckpt_bucket}/runs/s3-outage/epoch_0004/state.pt"))
    state = load_state(state_file)
    assert state["epoch"] == 3
    model = get_workload("tsm").build({"backbone": "resnet18"}, num_classes=4, num_frames=4)
    model.load_state_dict(state["model"])  # strict: every tensor there, none torn
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    import mlflow

    c = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = c.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(out["run_id"], "val/top1")] == [1, 2, 3, 4]
    assert [m.value for m in c.get_metric_history(out["run_id"], "data/bad_samples")] == [0, 0, 0, 0], \
        "the outage turned videos into bad samples"


def test_data_prepare_reads_and_writes_s3_and_resumes(s3, synth_dataset, tmp_path):
    from actionlab.data import encode, manifest, prepare

    bucket = s3.make_bucket("prepare")
    storage.upload_dir(synth_dataset.parent, f"{bucket}/raw")
    settings = encode.EncodeSettings(short_side_px=16, output_format="mp4")
    kwargs = dict(use_ray=False, cache_dir=str(tmp_path / "cache"), log=lambda _: None)
    report = prepare.prepare_dataset(f"{bucket}/raw/manifest.parquet", f"{bucket}/prepared", settings, **kwargs)
    assert (report.num_prepared, report.bad) == (24, ())
    out = manifest.read_manifest(f"{bucket}/prepared/manifest.parquet")
    assert list(out["num_frames"]) == [8] * 24 and manifest.preferred_decoder(out) == "pyav"
    assert storage.read_text(f"{bucket}/prepared/classes.txt") == storage.read_text(f"{bucket}/raw/classes.txt")
    local = storage.local_copy(f"{bucket}/prepared/{out['video'][0]}", tmp_path / "check")
    assert decode.read_frames(local, [0, 7], decoder="pyav").shape == (2, 16, 16, 3)
    s3.client().delete_object(Bucket="prepare", Key=f"prepared/{out['video'][3]}")
    again = prepare.prepare_dataset(f"{bucket}/raw/manifest.parquet", f"{bucket}/prepared", settings, **kwargs)
    assert (again.num_prepared, again.num_skipped) == (1, 23)
