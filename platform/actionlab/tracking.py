"""MLflow runs, metrics, artifacts, the model registry and safe model loading.

Driven by this module rather than Ray's MLflow callbacks: the driver creates (or reopens) the run,
Ray Train's rank 0 writes to it by run id, and `MLFLOW_TRACKING_URI` is always explicit because
Ray workers change directory. With nothing configured, runs go to an embedded SQLite store with
local artifacts under the state folder (`ACTIONLAB_HOME`, default `~/.actionlab`).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .models.meta import ModelMeta, ModelMetaError

RUN_NAME_TAG = "actionlab.run_name"
CHECKPOINT_ARTIFACT = "checkpoint"
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
ALIAS_HISTORY_TAG = "actionlab.alias_history"
CHECKPOINT_URI_TAG = "actionlab.checkpoint"  # the Ray checkpoint (local dir or s3://...) the weights came from
ERROR_TAG = "actionlab.error"  # why a run failed, as the driver saw it; cleared when a rerun resumes it
OUTAGE_TAG = "actionlab.tracking_outage"  # what happened when the tracking server was unreachable
WORKER_NODES_TAG = "actionlab.worker_nodes"  # Ray node ids the run's Train workers ran on, comma-separated
WAIT_ENV = "ACTIONLAB_MLFLOW_WAIT_S"  # how long the end of a run waits for an unreachable server (default 600)


def home() -> Path:
    """The state folder: embedded MLflow store, checkpoints, video cache, generated data."""
    return Path(os.environ.get("ACTIONLAB_HOME") or Path.home() / ".actionlab").expanduser().resolve()


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store under the state folder."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home() / 'mlflow.db'}"


def ui_command() -> str:
    from . import storage

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {storage.redact(uri)}"  # printed: never the user:password of the URI
    return f"mlflow ui --backend-store-uri {uri}"


def client():
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def experiment_id(name: str) -> str:
    """Creates the experiment if needed; embedded stores keep artifacts under the state folder."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (home() / "mlartifacts").as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_runs(experiment: str, run_name: str):
    """Runs of `experiment` whose stable actionlab run name is `run_name`, newest first."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
    )


def start_run(experiment: str, run_name: str, *, tags: dict | None = None, parent_run_id: str = "") -> str:
    """Creates a run and returns its id."""
    all_tags = {RUN_NAME_TAG: run_name, "mlflow.runName": run_name, "mlflow.user": getpass.getuser()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags.update(tags or {})
    run = client().create_run(experiment_id(experiment), run_name=run_name, tags=all_tags)
    return run.info.run_id


def log_params(run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    existing = client().get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), 100):
        client().log_batch(run_id, params=new[i : i + 100])


def log_metrics(run_id: str, metrics: dict, *, step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    if batch:
        client().log_batch(run_id, metrics=batch)


def set_tags(run_id: str, tags: dict) -> None:
    for key, value in tags.items():
        client().set_tag(run_id, key, str(value))


def delete_tag(run_id: str, key: str) -> None:
    """Removes a run's tag; a tag that is not there is fine."""
    from mlflow.exceptions import MlflowException

    try:
        client().delete_tag(run_id, key)
    except MlflowException:
        pass  # no such tag


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    client().log_text(run_id, text, artifact_file)


def log_artifacts(run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    client().log_artifacts(run_id, str(local_dir), artifact_path)


def end_run(run_id: str, status: str = "FINISHED") -> None:
    import io
    import sys

    from . import storage

    # MLflow prints "View run ... at: <tracking URI>/#/..." here, user:password included; print it masked.
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        client().set_terminated(run_id, status=status)
    if printed.getvalue():
        sys.stdout.write(storage.redact_text(printed.getvalue()))


# --- surviving a tracking-server outage ------------------------------------------------------------


def is_outage(err: BaseException) -> bool:
    """True when a tracking call failed because the server is unreachable or failing (5xx), not refused."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    return isinstance(err, OSError | ConnectionError | TimeoutError)


@contextlib.contextmanager
def _fail_fast():
    # MLflow's HTTP client retries a refused connection for about 4 minutes by default; rank 0 would
    # stall training that long. Buffered writes try once and keep their data for the next flush.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="15")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def add_worker_nodes(run_id: str, nodes: list[str]) -> bool:
    """Adds Ray node ids to the run's `WORKER_NODES_TAG`, keeping the ones a previous attempt of the
    run used (a run resumed after losing a node shows both). False when the server is unreachable:
    the tag is left as it was and training goes on."""
    try:
        with _fail_fast():
            c = client()
            seen = [n for n in c.get_run(run_id).data.tags.get(WORKER_NODES_TAG, "").split(",") if n]
            seen += [n for n in dict.fromkeys(nodes) if n not in seen]
            c.set_tag(run_id, WORKER_NODES_TAG, ",".join(seen))
        return True
    except Exception as err:  # noqa: BLE001 - only an outage is forgiven, see below
        if is_outage(err):
            return False
        raise


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class MetricBuffer:
    """Rank 0's metric writer: survives a tracking-server outage and writes each (metric, step) once.

    Values are queued with the time they were measured and written on `flush()`; when the server is
    unreachable they stay queued (and go into the checkpoint through `state()`, so a worker restart
    loses nothing) and are retried on the next flush. A (metric, step) already in the run's history is
    never written again: after a restart, redone epochs keep the values first logged, so the history
    has no gaps and no duplicates.
    """

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.pending: list[tuple[int, int, dict]] = []  # (step, timestamp ms, {key: value})
        self.outage: dict = {}  # failed_writes, first, last, error, written_late
        self._logged: dict[str, set[int]] = {}
        self.down = False  # the last flush failed: what the next one writes is written late

    def restore(self, state: dict | None) -> None:
        """Takes back the queue and outage record saved in a checkpoint by `state()`."""
        state = state or {}
        self.pending = [(int(s), int(t), dict(m)) for s, t, m in state.get("pending", [])] + self.pending
        self.outage = {**dict(state.get("outage") or {}), **self.outage}
        self.down = self.down or bool(self.pending and self.outage)

    def state(self) -> dict:
        """What a checkpoint keeps: plain lists and dicts, loadable with `torch.load(weights_only=True)`."""
        return {"pending": [[s, t, dict(m)] for s, t, m in self.pending], "outage": dict(self.outage)}

    def add(self, metrics: dict, *, step: int) -> None:
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        if values:
            self.pending.append((int(step), int(time.time() * 1000), values))

    def log(self, metrics: dict, *, step: int) -> bool:
        self.add(metrics, step=step)
        return self.flush()

    def flush(self) -> bool:
        """Writes the queue; False (queue kept) when the server is unreachable.

        Raises:
            MlflowException: the server refused the write (a 4xx: not an outage).
        """
        if not self.pending:
            return True
        try:
            with _fail_fast():
                written = self._write()
        except Exception as err:
            if not is_outage(err):
                raise
            now = time.time()
            self.outage["failed_writes"] = int(self.outage.get("failed_writes", 0)) + 1
            self.outage.setdefault("first", _utc(now))
            self.outage["last"] = _utc(now)
            from . import storage

            self.outage["error"] = storage.redact_text(str(err).splitlines()[0])[:300]
            self.down = True
            return False
        if self.down:
            self.outage["written_late"] = int(self.outage.get("written_late", 0)) + written
            self.down = False
        return True

    def _write(self) -> int:
        from mlflow.entities import Metric

        c = client()
        for key in sorted({k for _, _, m in self.pending for k in m} - self._logged.keys()):
            self._logged[key] = {m.step for m in c.get_metric_history(self.run_id, key)}
        batch, seen = [], set()
        for step, stamp, metrics in self.pending:
            for key, value in metrics.items():
                if step in self._logged[key] or (key, step) in seen:
                    continue
                seen.add((key, step))
                batch.append(Metric(key, value, stamp, step))
        for i in range(0, len(batch), 1000):
            chunk = batch[i : i + 1000]
            c.log_batch(self.run_id, metrics=chunk)
            for m in chunk:
                self._logged[m.key].add(m.step)
        self.pending = []
        return len(batch)

    def finish(self, *, wait_s: float | None = None, poll_s: float = 5.0) -> None:
        """Flushes the queue, waiting up to `wait_s` (`ACTIONLAB_MLFLOW_WAIT_S`, default 600) for the server.

        Raises:
            RuntimeError: the server stayed unreachable; the values are still in the last checkpoint.
        """
        wait_s = float(os.environ.get(WAIT_ENV) or 600) if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        while not self.flush():
            if time.monotonic() > deadline:
                from . import storage

                raise RuntimeError(
                    f"the MLflow server {storage.redact(tracking_uri())} was unreachable for more than {wait_s:.0f}s "
                    f"at the end of the run ({self.outage.get('error', '')}); {sum(len(m) for _, _, m in self.pending)} "
                    f"metric values are kept in the last checkpoint. Bring the server back and rerun the same "
                    f"command: it resumes this run and writes them (or raise {WAIT_ENV})."
                )
            time.sleep(poll_s)

    def outage_note(self) -> str:
        """A line for the run's `actionlab.tracking_outage` tag; empty when nothing went wrong."""
        if not self.outage:
            return ""
        return (
            f"MLflow unreachable for {self.outage.get('failed_writes', 0)} metric writes between "
            f"{self.outage.get('first')} and {self.outage.get('last')} ({self.outage.get('error', '')}); "
            f"training went on and {self.outage.get('written_late', 0)} buffered metric values were written "
            f"when it came back, with their original timestamps"
        )


# --- checkpoints as registered models -------------------------------------------------------------


def save_model_dir(out_dir: str | Path, model, meta: ModelMeta) -> Path:
    """Writes `model.safetensors` + `meta.json` (a `ModelMeta`: everything needed to rebuild the workload)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / MODEL_FILE))
    (out / META_FILE).write_text(json.dumps(meta.to_json(), indent=2, sort_keys=True))
    return out


@dataclass(frozen=True)
class LoadedModel:
    model: object  # torch.nn.Module in eval mode
    meta: ModelMeta  # the recorded workload, params, classes and preprocessing
    source: str


def resolve_model_dir(uri: str) -> Path:
    """`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/ID/checkpoint` or a local dir -> local dir."""
    import mlflow

    if uri.startswith("models:/"):
        name_ref = uri[len("models:/") :]
        c = client()
        if "@" in name_ref:
            name, alias = name_ref.split("@", 1)
            mv = c.get_model_version_by_alias(name, alias)
        elif "/" in name_ref:
            name, version = name_ref.split("/", 1)
            mv = c.get_model_version(name, version)
        else:
            raise ValueError(f"model URI {uri!r} needs an alias or a version: models:/NAME@champion or models:/NAME/3")
        source = mv.source
    else:
        source = uri
    if source.startswith("models:/m-"):  # an MLflow model (LoggedModel): its checkpoint artifact
        mlflow.set_tracking_uri(tracking_uri())
        logged = client().get_logged_model(source[len("models:/") :])
        source = f"{logged.artifact_location.rstrip('/')}/artifacts/{CHECKPOINT_ARTIFACT}"
    if source.startswith(("runs:/", "mlflow-artifacts:", "s3://", "file:")) and not Path(source).is_dir():
        mlflow.set_tracking_uri(tracking_uri())
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking_uri()))
    path = Path(source).expanduser()
    if (path / "MLmodel").is_file() and (path / "artifacts" / CHECKPOINT_ARTIFACT / META_FILE).is_file():
        path = path / "artifacts" / CHECKPOINT_ARTIFACT  # a downloaded MLflow model directory
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"{uri!r}: no {META_FILE} in {path}; expected a directory written by actionlab")
    return path


def load_weights(path: str | Path) -> dict:
    """Tensors of a safetensors file; anything else (a pickle, a torch.save file) is refused unread.

    Raises:
        ValueError: not a safetensors file (the message names it and says how to convert it).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such weights file; expected a directory written by actionlab") from None
        raise ValueError(
            f"{path} is not a safetensors file ({err}); actionlab never unpickles model files. Convert trusted "
            "weights with safetensors.torch.save_file(state_dict, 'model.safetensors'), or register the run again"
        ) from None


def read_meta(model_dir: str | Path) -> ModelMeta:
    """The `ModelMeta` of a model directory (its meta.json).

    Raises:
        ValueError: meta.json is not JSON; `model_meta.ModelMetaError` when the current code cannot
            rebuild what it records.
    """
    file = Path(model_dir) / META_FILE
    try:
        values = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not JSON ({err}); expected a directory written by actionlab") from None
    if not isinstance(values, dict):
        raise ValueError(f"{file} is not a JSON object; expected a directory written by actionlab")
    return ModelMeta.from_json(values, where=str(file))


def load_model(uri: str, *, device: str = "cpu") -> LoadedModel:
    """Rebuilds the workload with the params recorded in meta.json and loads its safetensors weights
    (never unpickles). The weight source param (`pretrained`) is not read: the weights are the file's.

    Raises:
        model_meta.ModelMetaError: the current code cannot build what the checkpoint records.
    """
    from workloads import get_workload

    path = resolve_model_dir(uri)
    meta = read_meta(path)
    spec = get_workload(meta.workload)
    snippet_frames = spec.input_for(meta.params).snippet_frames
    if meta.preprocessing.snippet_frames != snippet_frames:  # num_frames would count something else
        raise ModelMetaError(
            f"{uri}: meta.json records {meta.preprocessing.num_frames} frames of {meta.preprocessing.sampling!r} "
            f"sampling, but '{meta.workload}' now samples snippets of {snippet_frames} frames and num_frames counts "
            f"segments; set num_frames to the segments, sampling to 'snippets' and snippet_frames to "
            f"{snippet_frames} in meta.json (or import / train the model again)"
        )
    try:
        # The recorded weights replace every tensor: `pretrained` (recorded as trained) is not read again.
        model = spec.build(meta.params, num_classes=len(meta.classes), num_frames=meta.preprocessing.num_frames,
                           weights=False)
    except (ValueError, TypeError) as err:
        raise ModelMetaError(
            f"{uri}: this code cannot build the recorded workload '{meta.workload}' ({err}); it was written by "
            f"actionlab {meta.actionlab_version or '(version not recorded)'}: load it with that version"
        ) from None
    state = load_weights(path / MODEL_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{uri}: checkpoint does not match workload '{meta.workload}': "
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    model.to(device).eval()
    return LoadedModel(model=model, meta=meta, source=str(path))


# Distributions the pyfunc model imports when MLflow loads it (decord/av decode, pyarrow fetches URIs).
PYFUNC_REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "safetensors", "numpy", "pandas", "pyarrow",
                       "decord", "av", "pyyaml")


def pyfunc_signature():
    """Inputs: one string column of video paths or URIs; params: `top_k`; outputs: top-k per video.

    The input column is unnamed so that a plain list of paths passes MLflow's schema enforcement as
    well as a DataFrame (whose `video` column, else its first, is read).
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "video"),
                ColSpec(Array(DataType.string), "labels"),
                ColSpec(Array(DataType.long), "label_ids"),
                ColSpec(Array(DataType.double), "probs"),
                ColSpec(DataType.string, "error", required=False),
            ]
        ),
        params=ParamSchema([ParamSpec("top_k", DataType.long, 5)]),
    )


def pinned_requirements() -> list[str]:
    """PYFUNC_REQUIREMENTS pinned to the versions installed here (those installed)."""
    from importlib import metadata

    pins = []
    for dist in PYFUNC_REQUIREMENTS:
        try:
            marker = "; platform_machine == 'x86_64'" if dist == "decord" else ""  # no other wheels (pyproject)
            pins.append(f"{dist}=={metadata.version(dist)}{marker}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def log_pyfunc_model(run_id: str, checkpoint_dir: str | Path) -> str:
    """Logs `checkpoint_dir` (model.safetensors + meta.json) as an MLflow pyfunc model of run `run_id`.

    Models from code: the model is `actionlab/pyfunc_model.py`, the actionlab and workloads packages
    travel as code paths, the checkpoint as the `checkpoint` artifact; nothing is pickled.

    Returns:
        The model's URI (`models:/m-...`).
    """
    import shutil
    import tempfile

    import mlflow
    from mlflow.entities import LoggedModelOutput

    import workloads

    mlflow.set_tracking_uri(tracking_uri())
    c = client()
    run = c.get_run(run_id)
    logged = mlflow.initialize_logged_model(
        name="model", source_run_id=run_id, experiment_id=run.info.experiment_id,
        tags={RUN_NAME_TAG: run.data.tags.get(RUN_NAME_TAG, "")},
    )
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="actionlab-pyfunc-") as staging:
        # The signature is explicit; an input example would have to be a video file that exists here.
        warnings.filterwarnings("ignore", message=".*(type hints to the `predict`|input example was not provided)")
        from .models import pyfunc as pyfunc_model

        # MLflow names a directory artifact after its folder: stage it as `checkpoint/`, the place
        # resolve_model_dir reads, with nothing but the two files the loader needs.
        staged = Path(staging) / CHECKPOINT_ARTIFACT
        staged.mkdir()
        for file in (MODEL_FILE, META_FILE):
            shutil.copy2(Path(checkpoint_dir) / file, staged / file)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=pyfunc_model.__file__,
            artifacts={pyfunc_model.CHECKPOINT_KEY: str(staged)},
            code_paths=[str(Path(__file__).parent), str(Path(workloads.__file__).parent)],
            signature=pyfunc_signature(),
            pip_requirements=pinned_requirements(),
            model_id=logged.model_id,
        )
    c.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    mlflow.finalize_logged_model(logged.model_id, "READY")
    return info.model_uri


def _top1_of(c, name: str, version: str) -> float | None:
    value = c.get_model_version(name, version).tags.get("top1")
    return float(value) if value not in (None, "") else None


def register(
    run_id: str,
    name: str,
    *,
    alias: str = "champion",
    artifact_path: str = CHECKPOINT_ARTIFACT,
) -> dict:
    """Registers the run's checkpoint as a new version of `name`; moves `alias` only on improvement.

    The version is an MLflow pyfunc model (`log_pyfunc_model`): `mlflow.pyfunc.load_model` and
    `mlflow models serve` take `models:/NAME@ALIAS`, and `actionlab predict` reads its checkpoint.

    Tags come from the run: workload, dataset, frames, top1 (`val/top1`), gmacs. The alias moves when
    the new version's top1 beats the current holder's (or when the alias is unset); every move is
    appended to the registered model's alias history tag (who, from which version, when).
    """
    from mlflow.exceptions import MlflowException

    c = client()
    run = c.get_run(run_id)
    artifacts = [a.path for a in c.list_artifacts(run_id)]
    if artifact_path not in artifacts:
        raise ValueError(f"run {run_id} has no '{artifact_path}' artifact (has {artifacts}); did training finish?")
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(
            name, description="Registered by actionlab: MLflow pyfunc model over a safetensors checkpoint + meta.json"
        )
    params, metrics = run.data.params, run.data.metrics
    tags = {
        "workload": params.get("workload.name", ""),
        "dataset": params.get("data.name", ""),
        "frames": params.get("clip.num_frames", ""),
        "top1": metrics.get("val/top1", ""),
        "gmacs": metrics.get("model/gmacs", ""),
        "protocol": run.data.tags.get("actionlab.val_protocol", ""),
    }
    checkpoint = run.data.tags.get(CHECKPOINT_URI_TAG, "")
    if checkpoint:
        tags["checkpoint"] = checkpoint
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="actionlab-register-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{run_id}/{artifact_path}", dst_path=tmp, tracking_uri=tracking_uri()
        )
        model_uri = log_pyfunc_model(run_id, local)
    mv = c.create_model_version(
        name,
        source=model_uri,
        run_id=run_id,
        tags={k: str(v) for k, v in tags.items()},
        description=f"Checkpoint {checkpoint} (run {run_id})" if checkpoint else None,
        model_id=model_uri[len("models:/") :],
    )
    version = str(mv.version)
    moved = False
    previous = None
    if alias:
        try:
            previous = str(c.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            previous = None
        new_top1 = _top1_of(c, name, version)
        old_top1 = _top1_of(c, name, previous) if previous else None
        if previous is None or (new_top1 is not None and (old_top1 is None or new_top1 > old_top1)):
            c.set_registered_model_alias(name, alias, version)
            moved = True
            history = json.loads(c.get_registered_model(name).tags.get(ALIAS_HISTORY_TAG, "[]"))
            history.append(
                {
                    "alias": alias,
                    "version": version,
                    "previous": previous,
                    "by": getpass.getuser(),
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "top1": new_top1,
                }
            )
            c.set_registered_model_tag(name, ALIAS_HISTORY_TAG, json.dumps(history[-50:]))
    return {"name": name, "version": version, "alias": alias, "alias_moved": moved, "previous": previous}
