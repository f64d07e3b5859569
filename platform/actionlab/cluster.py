"""What every node of a Ray cluster can see: the driver decides it, before any compute.

On a cluster of more than one node, a Train worker (or a `data prepare` task) may run on any node
and reads and writes that node's own disk. A local path that the driver resolved, a manifest, a data
root, the checkpoint folder, the embedded SQLite MLflow store, is another file or no file there: a
worker fails on a missing manifest, or rank 0 logs to another node's empty MLflow store, or a
checkpoint lands where neither the driver nor the registry can read it. So the driver refuses such
settings before the MLflow run is created and before any worker starts, naming each one, and the fix.
One node (a laptop, a local Ray instance, a one-node cluster) keeps the zero-configuration defaults;
`storage.shared_fs: true` declares that local paths are on a file system every node mounts at the
same path (NFS, FSx), which makes them visible everywhere.

Workers record where they ran (`record_worker_nodes`), so a run shows which nodes trained it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterable, Literal
from urllib.parse import urlsplit

from . import storage, tracking
from .config import Config
from .data import manifest as data_manifest

SHARED_FS_SET = "--set storage.shared_fs=true"

Kind = Literal["data", "output", "storage", "tracking", "weights"]

_FIX = {  # one line per kind of offending setting, in the order met
    "data": "data: upload the dataset (`actionlab data upload DIR s3://BUCKET/PREFIX`) and set data.manifest "
            "(and any other data.* path) to its s3:// URIs",
    "output": "output: write to s3://BUCKET/PREFIX",
    "storage": "checkpoints: --set storage.uri=s3://BUCKET/runs",
    "tracking": "MLflow: run `actionlab mlflow-server` and export MLFLOW_TRACKING_URI=http://HOST:PORT (the address "
                "every node reaches it at) before starting the driver",
    "weights": "warm-start weights: register them in an MLflow server (`models:/NAME/VERSION`) or put them on s3://",
}
_LOCAL_TRACKING_SCHEMES = ("", "file", "sqlite")  # MLflow stores that are files on the driver's disk
_REGISTRY_SCHEMES = ("models", "runs")  # resolved through the tracking store, which is checked on its own


@dataclass(frozen=True)
class Location:
    """One path or URI that the workers of a job read or write.

    Attributes:
        setting: how the user sets it (`data.manifest`, `MLFLOW_TRACKING_URI`, `OUT`).
        value: the value the driver resolved.
        kind: what it holds, which decides the fix.
        default: where the value comes from when the user set none ('' when set explicitly).
    """

    setting: str
    value: str
    kind: Kind
    default: str = ""

    def node_local(self) -> bool:
        """True when the value is a file on the driver's own disk."""
        if not self.value:
            return False
        if self.kind == "tracking":  # MLflow's rule: a bare "databricks" is a remote workspace, other bare names paths
            return self.value != "databricks" and urlsplit(self.value).scheme in _LOCAL_TRACKING_SCHEMES
        if self.kind == "weights" and urlsplit(self.value).scheme in _REGISTRY_SCHEMES:
            return False
        return not storage.is_remote(self.value)

    def describe(self) -> str:
        origin = f" ({self.default})" if self.default else ""
        return f"{self.setting} = {storage.redact(self.value)}{origin}"


class NodeLocalError(RuntimeError):
    """Settings that point at one node's disk on a cluster of several nodes."""

    def __init__(self, offending: tuple[Location, ...], *, num_nodes: int, shared_fs_hint: str):
        self.offending = offending
        self.num_nodes = num_nodes
        lines = "".join(f"\n  - {loc.describe()}" for loc in offending)
        fixes = "".join(f"\n  - {_FIX[kind]}" for kind in dict.fromkeys(loc.kind for loc in offending))
        super().__init__(
            f"these settings are paths on the driver's own disk, but this Ray cluster has {num_nodes} alive nodes, "
            f"and a worker on another node reads and writes that node's disk, where such a path is another file "
            f"or none:{lines}\nFix:{fixes}\n"
            f"Or, when these paths are on a file system that every node mounts at the same path (NFS, FSx), "
            f"declare it with {shared_fs_hint}. Refused before compute: nothing was started."
        )


def config_locations(cfg: Config, *, storage_root: str, tracking_uri: str) -> tuple[Location, ...]:
    """Every path a training run's workers read or write, as the driver resolves them.

    Args:
        cfg: the run's config (data, storage and warm-start settings).
        storage_root: the checkpoint root the run uses (`storage.uri` or its default).
        tracking_uri: the MLflow store the workers log to.
    """
    d = cfg.data
    manifest = d.manifest
    beside = "default: beside data.manifest"
    out = [Location("data.manifest", manifest, "data")]
    if manifest:
        out += [
            Location("data.val_manifest", d.val_manifest or manifest, "data", "" if d.val_manifest else "default: data.manifest"),
            _root_location(d.root, manifest),
            Location("data.classes", d.classes or data_manifest.default_classes(manifest), "data",
                     "" if d.classes else beside),
        ]
    out.append(Location("storage.uri", storage_root, "storage", "" if cfg.storage.uri else
                        "default: under ACTIONLAB_HOME"))
    embedded = not os.environ.get("MLFLOW_TRACKING_URI")
    out.append(Location("MLFLOW_TRACKING_URI", tracking_uri, "tracking",
                        "not set: the embedded SQLite store under ACTIONLAB_HOME" if embedded else ""))
    if cfg.workload.init_from:
        out.append(Location("workload.init_from", cfg.workload.init_from, "weights"))
    return tuple(out)


def refuse_node_local(locations: Iterable[Location], *, num_nodes: int, shared_fs: bool,
                      shared_fs_hint: str = SHARED_FS_SET) -> None:
    """Raises `NodeLocalError` naming every node-local location when the job spans several nodes.

    One node sees its own disk, so nothing is refused there; with `shared_fs` the local paths are
    declared to be the same file on every node.

    Args:
        locations: what the job's workers read and write.
        num_nodes: alive nodes of the cluster (`alive_nodes()`).
        shared_fs: local paths are on a file system every node mounts at the same path.
        shared_fs_hint: how the user declares `shared_fs` for this command.
    """
    if num_nodes <= 1 or shared_fs:
        return
    offending = tuple(loc for loc in locations if loc.node_local())
    if offending:
        raise NodeLocalError(offending, num_nodes=num_nodes, shared_fs_hint=shared_fs_hint)


def check_config(cfg: Config, *, storage_root: str, num_nodes: int | None = None) -> None:
    """The pre-flight check of `train` and `tune`: `refuse_node_local` over `config_locations`.

    Args:
        cfg: the run's (or sweep's base) config.
        storage_root: the checkpoint root it uses.
        num_nodes: alive nodes; None asks Ray (which must be initialised).
    """
    num_nodes = alive_nodes() if num_nodes is None else num_nodes
    if num_nodes <= 1 or cfg.storage.shared_fs:
        return  # not even the tracking URI is looked up: one node keeps today's path exactly
    locations = config_locations(cfg, storage_root=storage_root, tracking_uri=tracking.tracking_uri())
    refuse_node_local(locations, num_nodes=num_nodes, shared_fs=cfg.storage.shared_fs)


def _root_location(root: str, manifest: str) -> Location:
    """`data.root`, or the default one: a local manifest's recorded root is read; a remote manifest is
    not (this check must not wait on a store), so its folder stands for it."""
    if root:
        return Location("data.root", root, "data")
    if storage.is_remote(manifest):
        return Location("data.root", storage.parent(manifest), "data", "default: the manifest's folder")
    return Location("data.root", data_manifest.default_root(manifest), "data",
                    data_manifest.default_root_note(manifest))


def prepare_locations(*, root: str, out_root: str, root_note: str = "") -> tuple[Location, ...]:
    """What `data prepare`'s tasks read (the source videos) and write (the prepared copies); `root_note`
    says where a root not given came from (`manifest.default_root_note`)."""
    return (Location("--root", root, "data", root_note),
            Location("OUT", out_root, "output"))


def node_resources() -> list[dict]:
    """The resources of each alive node of the Ray cluster this process is connected to.

    Raises:
        RuntimeError: Ray is not initialised (call `init_ray()` first).
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("node_resources() needs Ray: call actionlab.cluster.init_ray() first")
    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def alive_nodes() -> int:
    """How many nodes of the Ray cluster this process is connected to are alive."""
    return len(node_resources())


def record_worker_nodes(run_id: str, *, rank: int) -> list[str]:
    """Every Train worker: gathers the Ray node id of each rank; rank 0 adds them to the run's
    `tracking.WORKER_NODES_TAG`, which keeps the nodes of earlier attempts (a run resumed after losing a
    node shows both).

    Called by all ranks the same number of times (a collective). An unreachable tracking server
    costs the tag, not the run. Returns the node ids in rank order.
    """
    import ray
    import torch.distributed as dist

    nodes = [ray.get_runtime_context().get_node_id()]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        nodes = [None] * dist.get_world_size()
        dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    if rank == 0 and not tracking.add_worker_nodes(run_id, nodes):
        sys.stderr.write(f"actionlab: MLflow unreachable; run {run_id} is not tagged with its worker nodes {nodes}\n")
    return nodes


# -- joining Ray: the one place train, tune, data prepare, serve and bench start or join a cluster --


def init_ray() -> None:
    """Joins `RAY_ADDRESS` when set (as under `ray job submit`), else starts a local instance.

    A local instance keeps Ray's dashboard: Train's placement-group cleaner polls the State API it
    serves (without it, it warns every second and cannot clean up after a killed trial).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or "local"
    # Under `ray job submit` the job's runtime env is merged with this one, and Ray refuses a variable
    # set by both (even to the same value): the job's own are already in this process's environment.
    env_vars = {k: v for k, v in worker_env().items() if k not in _job_env_keys()}
    level = logging.INFO if os.environ.get("ACTIONLAB_VERBOSE") else logging.WARNING
    ray.init(address=address, logging_level=level, runtime_env={"env_vars": env_vars})


def _job_env_keys() -> set[str]:
    """Env var names that the enclosing Ray job's runtime env sets (empty outside a job)."""
    text = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not text:
        return set()
    try:
        return set(((json.loads(text).get("runtime_env") or {}).get("env_vars")) or {})
    except (ValueError, AttributeError):
        return set()


def worker_env() -> dict:
    """Environment every Ray worker needs (workers chdir, so the tracking URI must be explicit)."""
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(), "ACTIONLAB_HOME": str(tracking.home())}
    for key in ("HF_HUB_OFFLINE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                "ACTIONLAB_DECODER", storage.CACHE_MAX_GB_ENV, storage.MAX_ATTEMPTS_ENV,
                "ACTIONLAB_SYSTEM_METRICS", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env
