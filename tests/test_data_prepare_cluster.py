"""`actionlab data prepare` on a Ray cluster of several nodes, S3 in and out: its tasks run on every
node, and a node SIGKILLed mid-job costs the videos it was encoding, not the job: they are redone on
the nodes left, and every video ends up prepared once, complete and decodable."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers.process import REPO

from actionlab.data import encode, prepare, synthetic

pytestmark = pytest.mark.integration

# 32 videos of 96 frames at 128 px: ~1 s of encoding each on a quiet 2-core box (10 s for the job at 48 frames,
# tasks too short to be sure of catching one in flight), a task long enough for the kill to land inside one
NUM_CLASSES, VIDEOS_PER_CLASS, NUM_FRAMES, SIZE = 4, 8, 96, 128
SHORT_SIDE = 96


def _objects(s3, bucket: str, prefix: str) -> dict:
    """key -> size of every object under `prefix`."""
    client, out, token = s3.client(), {}, None
    while True:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _records(s3, bucket: str, prefix: str, seen: dict | None = None) -> dict:
    """video -> done record, for every record under `prefix` (`seen`: records already read, kept)."""
    client, seen = s3.client(), {} if seen is None else seen
    for key in _objects(s3, bucket, f"{prefix}/{prepare.DONE_DIR}/"):
        if key.endswith(".json") and key not in seen:
            seen[key] = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return {r["video"]: r for r in seen.values()}


def _prepare_tasks(cluster, *, detail: bool = False, **equal: str) -> list:
    """The State API's `data prepare` tasks (every attempt) whose fields equal `equal`."""
    from ray.util.state import list_tasks

    tasks = list_tasks(address=cluster.dashboard_url, filters=[(k, "=", v) for k, v in equal.items()], limit=10000,
                       raise_on_missing_output=False, detail=detail)
    return [t for t in tasks if "_ray_prepare" in t.name]


def _cached_videos(cache: Path) -> int:
    """Videos a node has fetched (or is fetching) into its read-through cache: one per task it started."""
    if not cache.is_dir():
        return 0
    return len({f.name.lstrip(".").split(".")[0] for f in cache.glob("*/*")})


def _decoded_frames(data: bytes) -> int:
    """Frames a decoder gets out of the file: every frame decoded, not the container's claim."""
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_prepare_spreads_over_nodes_and_survives_a_node_killed_mid_job(ray_cluster, s3, tmp_path):
    from ray.util.state import list_nodes

    cluster = ray_cluster
    # Head, node2 and this one, 1 CPU each; this one is lost mid-job. Added first: its agents start
    # while the data is made.
    doomed = cluster.add_node(num_cpus=1)
    bucket = "prepare-cluster"
    s3.make_bucket(bucket)
    synthetic.synthesize(tmp_path / "src", num_classes=NUM_CLASSES, videos_per_class=VIDEOS_PER_CLASS,
                         num_frames=NUM_FRAMES, size_px=SIZE, seed=0, num_procs=1)
    total = NUM_CLASSES * VIDEOS_PER_CLASS
    env = dict(cluster.env, **s3.env, RAY_ADDRESS=cluster.address)
    cli = [sys.executable, "-m", "actionlab", "data"]
    upload = subprocess.run([*cli, "upload", str(tmp_path / "src"), f"s3://{bucket}/raw"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert upload.returncode == 0, upload.stdout + upload.stderr
    node_ids = {n.node_name: n.node_id for n in list_nodes(address=cluster.dashboard_url, limit=10000,
                                                           raise_on_missing_output=False) if n.state == "ALIVE"}
    assert set(node_ids) == {"head", "node2", doomed.name}

    out_log, err_log = tmp_path / "prepare.out", tmp_path / "prepare.err"
    command = [*cli, "prepare", f"s3://{bucket}/raw/manifest.parquet", f"s3://{bucket}/prepared",
               "--short-side", str(SHORT_SIDE), "--json"]
    seen: dict = {}
    started = time.monotonic()
    with open(out_log, "w") as out, open(err_log, "w") as err:
        proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=err)
    try:
        # Kill the node while it runs a task and the job is well short of done: the task dies with it,
        # and so do the results the node holds in its object store. A task's first step is to fetch its
        # video into the node's own cache, its last to write the done record, so a node whose cache holds
        # more videos than it has done records for is inside a task. Both show at once, where the State
        # API lags by seconds, longer than a whole job on a quiet machine. (Between two of its tasks a
        # node runs none: a kill there would cost nothing and prove nothing.)
        # The cache is read every 50 ms; the done records (an S3 listing and a read per new record) only when
        # the cache says a task may be in flight, so the kill lands inside that task, not after it.
        doomed_cache = doomed.sees(cluster.local_dir / "home" / "cache")
        first_done, records, doomed_done = None, {}, 0
        while True:
            started_on_doomed = _cached_videos(doomed_cache)
            if started_on_doomed > doomed_done or len(records) < 3:
                records = _records(s3, bucket, "prepared", seen)
                first_done = first_done or (time.monotonic() if records else None)
                doomed_done = sum(r["node"] == node_ids[doomed.name] for r in records.values())
                if len(records) >= 3 and started_on_doomed > doomed_done:
                    break
            assert proc.poll() is None, f"prepare ended before the kill:\n{out_log.read_text()[-4000:]}"
            assert time.monotonic() - started < 240, f"no progress on {doomed.name}:\n{out_log.read_text()[-4000:]}"
            time.sleep(0.05)
        killed_at, killed_wall, done_at_kill = time.monotonic(), time.time(), len(records)
        assert done_at_kill < total * 0.8, f"the kill came too late to land mid-job: {done_at_kill}/{total} done"
        cluster.remove_node(doomed)  # SIGKILL: raylet, workers, object store
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    finished = time.monotonic()
    output = out_log.read_text()
    assert rc == 0, output[-3000:] + err_log.read_text()[-6000:]

    # The task running on the lost node was retried on another node and finished there. (The State API
    # may never hear of the lost attempt itself: a SIGKILLed worker's task events die with it; the retry,
    # a later attempt of the same task on a node that lived, is what it does list.)
    node_of = {v: k for k, v in node_ids.items()}
    attempts = [(a.task_id, a.attempt_number, a.state, node_of.get(a.node_id, a.node_id), a.error_type)
                for a in _prepare_tasks(cluster)]
    retried = [a for a in attempts if a[1] > 0 and a[2] == "FINISHED" and a[3] != doomed.name]
    assert retried, f"no task was retried after {doomed.name} was lost: {attempts}"
    redone_after_s = max((t.end_time_ms / 1000 - killed_wall for r in retried
                          for t in _prepare_tasks(cluster, detail=True, task_id=r[0])
                          if t.state == "FINISHED" and t.attempt_number > 0 and t.end_time_ms), default=float("nan"))

    # The job finished in one go: every video prepared in this run, none counted as done by mistake.
    summary = json.loads(next(line for line in reversed(output.splitlines()) if line.startswith('{"manifest"')))
    assert (summary["videos"], summary["prepared"], summary["skipped_already_done"], summary["bad"]) == \
        (total, total, 0, 0), summary
    # Every node took part (the lost one may have been killed inside its first video).
    assert {"head", "node2"} <= set(summary["prepared_on"]) <= {"head", "node2", doomed.name}, summary
    assert sum(summary["prepared_on"].values()) == total
    assert "Ray cluster: 3 node(s)" in output and f"prepared {total}/{total} (100%)" in output
    assert output.count(f"/{total} (") >= 5, "progress was not shown while it ran"

    # One output and one done record per video, nothing else: no partial object, no leftover temp file.
    keys = _objects(s3, bucket, "prepared/")
    names = {encode.output_name(f"videos/{c}_{i:03d}.mp4", encode.EncodeSettings())
             for c in synthetic.CLASS_NAMES[:NUM_CLASSES] for i in range(VIDEOS_PER_CLASS)}
    expected = ({f"prepared/{n}" for n in names} | {f"prepared/{prepare.DONE_DIR}/{n}.json" for n in names}
                | {"prepared/manifest.parquet", "prepared/classes.txt"})
    assert set(keys) == expected, sorted(set(keys) ^ expected)
    records = _records(s3, bucket, "prepared")
    assert set(records) == names
    assert {node_of[r["node"]] for r in records.values()} == set(summary["prepared_on"])
    assert len({r["run"] for r in records.values()}) == 1

    # Each copy is complete: its size is its record's, and a decoder gets every frame out of it.
    from actionlab.data import manifest

    df = manifest.read_manifest(f"s3://{bucket}/prepared/manifest.parquet")
    assert sorted(df["video"]) == sorted(names) and list(df["num_frames"]) == [NUM_FRAMES] * total
    client = s3.client()
    for name in sorted(names):
        data = client.get_object(Bucket=bucket, Key=f"prepared/{name}")["Body"].read()
        assert len(data) == records[name]["bytes_out"] == keys[f"prepared/{name}"]
        assert _decoded_frames(data) == NUM_FRAMES, name

    # What the lost node cost: its video in flight, redone elsewhere once Ray declared the node dead,
    # and a third of the CPUs for the rest of the job.
    before = done_at_kill / max(1e-6, killed_at - first_done) if done_at_kill > 1 else float("nan")
    after = (total - done_at_kill) / max(1e-6, finished - killed_at)
    print(f"\nprepare on 3 nodes: {total} videos; first done {first_done - started:.1f}s after the start (Ray "
          f"workers starting); {doomed.name} SIGKILLed at {killed_at - started:.1f}s with {done_at_kill}/{total} done "
          f"and {len(retried)} task(s) retried elsewhere; its video redone on another node {redone_after_s:.1f}s after "
          f"the kill; finished {finished - killed_at:.1f}s after the kill, {finished - started:.1f}s in all; "
          f"{before:.2f} videos/s on 3 nodes before the kill, {after:.2f} on 2 after; prepared on "
          f"{summary['prepared_on']}")
