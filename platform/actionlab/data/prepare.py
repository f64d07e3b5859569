"""`actionlab data prepare`: re-encode a dataset once so that sampled frames are cheap to decode.

Sparse sampling decodes each wanted frame from its keyframe. Downloaded videos (x264 and YouTube
defaults) have a keyframe every ~250 frames, so an 8-frame clip decodes most of the file: about
9 clips/s per core on Kinetics-like 340x256 files, whatever the decoding library (see
`actionlab bench data`). Re-encoding at the papers' short side with a short keyframe interval and
no B-frames bounds the work per sampled frame; all-intra (`gop=1`) makes every frame independent.
`tune=fastdecode` drops CABAC and the deblocking filter, which the decoder pays for on every frame.

A video counts as done only through its done record (`DONE_DIR/<output>.json` under the output
root), written after the output itself is complete, and only while the output still has the size the
record names and the record's settings are this run's. A task killed mid-write (a lost node, a killed
driver) leaves at most an output without a record, which a rerun or Ray's retry of the task redoes:
nothing half-written is ever counted, and finished videos are never encoded twice.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import storage
from .encode import EncodeSettings, encode_video, output_name

ERRORS_FILE = "prepare_errors.tsv"
DONE_DIR = ".prepare"  # under the output root: one done record per finished video (`done_record_uri`)
# Measured by `actionlab bench data` (see README): on prepared files PyAV's seeking reader decodes
# each wanted frame from its own keyframe (all intra: 2.5x decord's rate); on raw files both are equal.
PREPARED_DECODER = "pyav"


@dataclass(frozen=True)
class PrepareResult:
    """One manifest row's outcome."""

    index: int
    video: str  # the new relative path ('' when it failed)
    num_frames: int
    bytes_in: int
    bytes_out: int
    skipped: bool  # already prepared by an earlier run
    error: str  # '' when it worked
    node: str = ""  # Ray node id of the task that wrote the output ('' outside Ray or when it failed)


def local_size(path: str) -> int:
    """Bytes of a local file, or of the files of a frame folder; 0 when it does not exist."""
    if os.path.isdir(path):
        return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
    return os.path.getsize(path) if os.path.exists(path) else 0


def _remote_size(uri: str) -> int:
    """Bytes of a remote object, or of every object under a remote folder (0 when there is none)."""
    import pyarrow.fs as pafs

    filesystem, path = storage.resolve(uri)
    info = storage.retrying("look up", uri, lambda: filesystem.get_file_info(path))
    if info.type == pafs.FileType.Directory:
        selector = pafs.FileSelector(path, recursive=True)
        return sum(i.size or 0 for i in storage.retrying("list", uri, lambda: filesystem.get_file_info(selector)))
    return info.size or 0


def _output_size(uri: str) -> int:
    return _remote_size(uri) if storage.is_remote(uri) else local_size(uri)


def done_record_uri(out_root: str, name: str) -> str:
    """Where the done record of the output `name` (relative to `out_root`) lives."""
    return storage.join(out_root, DONE_DIR, f"{name}.json")


def _read_record(uri: str) -> dict | None:
    """A done record, or None when there is none (or it cannot be parsed: then it proves nothing)."""
    try:
        record = json.loads(storage.read_bytes(uri))
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _record_holds(record: dict, target: str, settings: EncodeSettings) -> bool:
    """True when the record describes the output now at `target`, made with `settings`.

    The size check catches an output replaced or cut short after its record was written (a copy by
    hand, another run with other settings killed mid-way); the settings check makes a rerun with new
    settings redo the video instead of keeping a copy made another way.
    """
    try:
        return (record.get("settings") == asdict(settings) and int(record["num_frames"]) > 0
                and int(record["bytes_out"]) == _output_size(target))
    except (KeyError, TypeError, ValueError):
        return False


def _delete(uri: str) -> None:
    """Deletes a file or a folder (and what it holds) at `uri`; nothing there is fine."""
    import shutil

    import pyarrow.fs as pafs

    if not storage.is_remote(uri):
        path = storage.local_path(uri)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            Path(path).unlink(missing_ok=True)
        return
    filesystem, path = storage.resolve(uri)
    info = storage.retrying("look up", uri, lambda: filesystem.get_file_info(path))
    if info.type == pafs.FileType.Directory:
        storage.retrying("delete", uri, lambda: filesystem.delete_dir(path))
    elif info.type == pafs.FileType.File:
        storage.retrying("delete", uri, lambda: filesystem.delete_file(path))


def _node_id() -> str:
    """The Ray node this process runs on ('' outside Ray)."""
    import sys

    ray = sys.modules.get("ray")  # a task has Ray imported; a run without Ray must not start it
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""


def prepare_row(
    index: int, row: dict, *, root: str, out_root: str, settings: EncodeSettings, cache_dir: str = "",
    run_id: str = "",
) -> PrepareResult:
    """Prepares one manifest row into `out_root`; never raises for a bad input (it is reported).

    Idempotent, so Ray may run it again (a retried task, a lost output rebuilt from lineage): a video
    whose done record holds is returned as it was recorded, counted as skipped only when an earlier
    run (another `run_id`) did it.

    Args:
        index: the row's position in the manifest.
        row: the row's `video` (and `media`).
        root: source data root.
        out_root: output root (local or `s3://`).
        settings: how to re-encode.
        cache_dir: local cache for remote sources (default: under this node's `ACTIONLAB_HOME`).
        run_id: the `prepare_dataset` call this row belongs to.
    """
    from .. import tracking
    from . import dataset, decode

    video = str(row["video"])
    media = row.get("media") or "video"
    name = output_name(video, settings)
    target = storage.join(out_root, name)
    record_uri = done_record_uri(out_root, name)
    try:
        source = dataset.resolve_media(root, video)
        record = _read_record(record_uri)
        if record is not None and _record_holds(record, target, settings):
            earlier = record.get("run") != run_id
            return PrepareResult(index, name, int(record["num_frames"]), 0 if earlier else int(record["bytes_in"]),
                                 int(record["bytes_out"]), earlier, "", str(record.get("node", "")))
        if record is not None:
            _delete(record_uri)  # the output is about to change: the record must not outlive what it describes
        local_src = dataset.fetch_local(source, cache_dir or str(tracking.home() / "cache")) \
            if media != "frames" else source
        if media != "frames":
            decode.check_file(local_src)
        bytes_in = local_size(local_src)
        if not storage.is_remote(target):
            count = encode_video(local_src, target, settings, media=media)
            size = local_size(target)
        else:
            with storage.scratch_dir("prepare") as tmp:  # a killed task's leftovers go at the next start
                local = os.path.join(tmp, Path(name).name)
                count = encode_video(local_src, local, settings, media=media)
                size = local_size(local)
                if os.path.isdir(local):
                    _delete(target)  # frames of an unfinished or older copy must not stay beside the new ones
                    storage.upload_dir(local, target, num_threads=4)
                else:
                    # One PUT (or a multipart upload completed only at the end): never a partial object.
                    storage.write_bytes(target, Path(local).read_bytes())
        node = _node_id()
        done = {"video": name, "num_frames": count, "bytes_in": bytes_in, "bytes_out": size, "node": node,
                "run": run_id, "settings": asdict(settings)}
        storage.write_bytes(record_uri, json.dumps(done, indent=1).encode())  # last: only now is it done
        return PrepareResult(index, name, count, bytes_in, size, False, "", node)
    except (storage.CacheFullError, storage.RetriesExhausted):
        raise  # not the video's fault: stop rather than list every later row as bad
    except dataset.BadSample as err:
        return PrepareResult(index, "", 0, 0, 0, False, err.reason)
    except decode.DecodeError as err:
        return PrepareResult(index, "", 0, 0, 0, False, err.reason)
    except Exception as err:  # PyAV raises many av.error types for undecodable input
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return PrepareResult(index, "", 0, 0, 0, False, f"cannot re-encode ({first[:200]}); the file is corrupt")


def _ray_prepare(batch: dict, *, root: str, out_root: str, settings: EncodeSettings, cache_dir: str,
                 run_id: str, columns: list) -> dict:
    """Ray Data `map_batches` function: prepares each row of a batch (one row per task by default)."""
    results = []
    for i in range(len(batch["_index"])):
        row = {c: batch[c][i] for c in columns}
        results.append(prepare_row(int(batch["_index"][i]), row, root=root, out_root=out_root,
                                   settings=settings, cache_dir=cache_dir, run_id=run_id))
    return {field: np.asarray([getattr(r, field) for r in results]) for field in PrepareResult.__dataclass_fields__}


@dataclass(frozen=True)
class PrepareReport:
    manifest: str
    num_videos: int
    num_prepared: int
    num_skipped: int
    bad: tuple  # (video, reason)
    bytes_in: int
    bytes_out: int
    seconds: float
    settings: EncodeSettings
    prepared_on: tuple = ()  # (node name, videos prepared there in this run), most first; empty without Ray

    def summary(self) -> dict:
        return {
            "manifest": storage.redact(self.manifest),
            "videos": self.num_videos,
            "prepared": self.num_prepared,
            "skipped_already_done": self.num_skipped,
            "bad": len(self.bad),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "seconds": round(self.seconds, 1),
            "settings": self.settings.describe(),
            "prepared_on": dict(self.prepared_on),
        }


def _progress(done: int, total: int, started: float) -> str:
    elapsed = time.perf_counter() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta == eta else "?"
    return f"prepared {done}/{total} ({done / max(1, total):.0%}) {rate:.2f} videos/s, ETA {eta_text}"


def _node_names() -> dict:
    """Ray node id -> node name (`ray start --node-name`, by default its IP), dead nodes included."""
    import ray

    return {n["NodeID"]: n.get("NodeName") or n.get("NodeManagerAddress") or n["NodeID"][:12] for n in ray.nodes()}


def _before_compute(*, root: str, out_root: str, root_note: str, shared_fs: bool, num_cpus_per_task: float,
                    log) -> None:
    """What the driver checks and says on the joined Ray cluster before any task starts: node-local
    `--root` and OUT are refused on a cluster of several nodes (`actionlab.cluster`), and the capacity."""
    from .. import cluster

    alive = cluster.node_resources()
    cluster.refuse_node_local(cluster.prepare_locations(root=root, out_root=out_root, root_note=root_note),
                              num_nodes=len(alive), shared_fs=shared_fs, shared_fs_hint="--shared-fs")
    cpus = [float(n.get("CPU", 0)) for n in alive]
    at_once = sum(int(c // num_cpus_per_task) for c in cpus) if num_cpus_per_task > 0 else 0
    log(f"Ray cluster: {len(alive)} node(s), {sum(cpus):g} CPUs: up to {at_once} videos at once "
        f"({num_cpus_per_task:g} CPU each); a lost node's videos are redone on the others")
    if not at_once:
        # Not refused: an autoscaling cluster adds nodes for tasks that fit none of today's.
        log(f"warning: no alive node has {num_cpus_per_task:g} CPUs; the tasks wait until one joins "
            "(lower --cpus-per-task, or add nodes)")


def prepare_dataset(
    manifest_uri: str,
    out_root: str,
    settings: EncodeSettings,
    *,
    root: str = "",
    cache_dir: str = "",
    num_cpus_per_task: float = 1.0,
    use_ray: bool = True,
    shared_fs: bool = False,
    log=print,
) -> PrepareReport:
    """Re-encodes every row of a manifest into `out_root` and writes `out_root/manifest.parquet`.

    The work is a Ray Data job (a local instance, or the cluster of `RAY_ADDRESS`), one task per
    video on `num_cpus_per_task` CPUs, so it spreads over every node's CPUs. A task lost with its node
    is retried on the others (Ray Data retries system failures without limit), and rows whose done
    record holds are skipped, so a rerun after a crash resumes. The new manifest, written at the end,
    keeps every column (labels, splits), points `video` at the copies and fills `num_frames`; bad inputs
    are left out of it and listed in `prepare_errors.tsv` beside it, with the reason. `classes.txt` is
    copied.

    Args:
        manifest_uri: the source manifest (local or `s3://`).
        out_root: output dataset folder (local or `s3://`; on a cluster of several nodes, `s3://`).
        settings: how to re-encode.
        root: source data root (default: the one recorded in the manifest, else its folder).
        cache_dir: local cache for remote sources (default: under each node's `ACTIONLAB_HOME`).
        num_cpus_per_task: CPUs Ray reserves per video.
        use_ray: False runs in this process (tests, one-off small sets).
        shared_fs: local `root` and `out_root` are on a file system every node mounts at the same path;
            without it a Ray cluster of several nodes refuses them (each node would read and write its own disk).
        log: where progress lines go.
    """
    import uuid

    from . import manifest as data_manifest

    df = data_manifest.read_manifest(manifest_uri).reset_index(drop=True)
    root_note = "" if root else data_manifest.default_root_note(manifest_uri)
    root = root or data_manifest.default_root(manifest_uri, df)
    if not storage.is_remote(out_root):
        out_root = str(Path(out_root).expanduser().resolve())
        if not storage.is_remote(root) and Path(out_root) == Path(root).expanduser().resolve():
            raise ValueError(f"output folder {out_root} is the source data root; choose another folder")
    if settings.fps and {"start", "end"} <= set(df.columns):
        log("note: --fps resamples the videos, so the manifest's start/end frame ranges no longer apply; they are "
            "dropped and each video is used whole")
    columns = [c for c in ("video", "media") if c in df.columns]
    total = len(df)
    results: list[PrepareResult] = []
    step = max(1, total // 20)
    kwargs = dict(root=root, out_root=out_root, settings=settings, cache_dir=cache_dir, run_id=uuid.uuid4().hex)
    node_names: dict = {}
    if use_ray:
        from ..cluster import init_ray

        init_ray()
        _before_compute(root=root, out_root=out_root, root_note=root_note, shared_fs=shared_fs,
                        num_cpus_per_task=num_cpus_per_task, log=log)
    started = time.perf_counter()
    log(f"preparing {total} videos from {storage.redact(manifest_uri)} into {storage.redact(out_root)} "
        f"({settings.describe()})")
    if use_ray:
        import ray

        media = df["media"].fillna("video").astype(str) if "media" in df.columns else ["video"] * total
        items = [{"_index": i, "video": str(v), "media": m} for i, (v, m) in enumerate(zip(df["video"], media))]
        # One video per task keeps tasks short enough to spread and to retry; outputs are idempotent.
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(total, 4096))).map_batches(
            _ray_prepare, fn_kwargs={**kwargs, "columns": ["video", "media"]}, batch_size=1,
            num_cpus=num_cpus_per_task, batch_format="numpy",
        )
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
            for i in range(len(batch["index"])):
                results.append(PrepareResult(**{k: _plain(batch[k][i]) for k in PrepareResult.__dataclass_fields__}))
            if len(results) % step == 0 or len(results) == total:
                log(_progress(len(results), total, started))
        node_names = _node_names()
    else:
        for i, row in enumerate(df[columns].to_dict("records")):
            results.append(prepare_row(i, row, **kwargs))
            if len(results) % step == 0 or len(results) == total:
                log(_progress(len(results), total, started))
    results.sort(key=lambda r: r.index)
    if [r.index for r in results] != list(range(total)):  # a lost or doubled result would corrupt the manifest
        raise RuntimeError(f"the Ray Data job returned {len(results)} results for {total} manifest rows; rerun "
                           "the command (finished videos are skipped)")
    good = [r for r in results if not r.error]
    bad = tuple((str(df.loc[r.index, "video"]), r.error) for r in results if r.error)
    out = df.loc[[r.index for r in good]].copy()
    out["video"] = [r.video for r in good]
    out["num_frames"] = np.asarray([r.num_frames for r in good], dtype="int64")
    for column in ("start", "end"):
        if column in out.columns and settings.fps:
            out = out.drop(columns=column)
    if settings.output_format == "jpeg":
        out["media"] = "frames"
    elif "media" in out.columns:
        out["media"] = "video"
    manifest_out = storage.join(out_root, "manifest.parquet")
    metadata = {"prepared": {"settings": asdict(settings), "source": storage.redact(manifest_uri)}}
    if settings.output_format == "mp4":
        metadata["decoder"] = PREPARED_DECODER
    storage.write_bytes(manifest_out, data_manifest.manifest_bytes(out.reset_index(drop=True), metadata))
    classes_src = data_manifest.default_classes(manifest_uri)
    if storage.exists(classes_src):
        storage.write_bytes(storage.join(out_root, "classes.txt"), storage.read_bytes(classes_src))
    errors_uri = storage.join(out_root, ERRORS_FILE)
    if bad:
        storage.write_bytes(errors_uri, "".join(f"{v}\t{why}\n" for v, why in bad).encode())
        for video, why in bad:
            log(f"bad input {video}: {why}")
    else:
        _delete(errors_uri)  # an earlier run's list: its inputs are prepared now
    prepared_on: dict = {}
    for r in good:
        if not r.skipped and r.node:
            name = node_names.get(r.node, r.node[:12])
            prepared_on[name] = prepared_on.get(name, 0) + 1
    return PrepareReport(
        manifest=manifest_out,
        num_videos=total,
        num_prepared=sum(1 for r in good if not r.skipped),
        num_skipped=sum(1 for r in good if r.skipped),
        bad=bad,
        bytes_in=sum(r.bytes_in for r in good),
        bytes_out=sum(r.bytes_out for r in good),
        seconds=time.perf_counter() - started,
        settings=settings,
        prepared_on=tuple(sorted(prepared_on.items(), key=lambda item: -item[1])),
    )


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value

