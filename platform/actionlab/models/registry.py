"""The model registry: a run's model folder logged as an MLflow pyfunc model, registered as a version,
with aliases that move only on improvement and a history of every move.

The pyfunc model is "models from code": `pyfunc.py` beside this module is logged as a file, with the
actionlab and workloads packages as code paths and the model folder as its `checkpoint` artifact.
This module names that file by its path and never imports it: the pyfunc model imports the loaders
and `predict`, which sit above the registry.
"""

from __future__ import annotations

import getpass
import json
import time
import warnings
from pathlib import Path

from .. import tracking
from .folder import CHECKPOINT_ARTIFACT, META_FILE, MODEL_FILE

ALIAS_HISTORY_TAG = "actionlab.alias_history"
PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc.py")  # MLflow executes it when it loads a version


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

    Models from code: the model is `actionlab/models/pyfunc.py`, the actionlab and workloads packages
    travel as code paths, the checkpoint as the `checkpoint` artifact; nothing is pickled.

    Returns:
        The model's URI (`models:/m-...`).
    """
    import shutil
    import tempfile

    import mlflow
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput

    import workloads

    mlflow.set_tracking_uri(tracking.tracking_uri())
    c = tracking.client()
    run = c.get_run(run_id)
    logged = mlflow.initialize_logged_model(
        name="model", source_run_id=run_id, experiment_id=run.info.experiment_id,
        tags={tracking.RUN_NAME_TAG: run.data.tags.get(tracking.RUN_NAME_TAG, "")},
    )
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="actionlab-pyfunc-") as staging:
        # The signature is explicit; an input example would have to be a video file that exists here.
        warnings.filterwarnings("ignore", message=".*(type hints to the `predict`|input example was not provided)")
        # MLflow names a directory artifact after its folder: stage it as `checkpoint/`, the place
        # resolve_model_dir reads, with nothing but the two files the loader needs.
        staged = Path(staging) / CHECKPOINT_ARTIFACT
        staged.mkdir()
        for file in (MODEL_FILE, META_FILE):
            shutil.copy2(Path(checkpoint_dir) / file, staged / file)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_MODEL_FILE),
            artifacts={CHECKPOINT_ARTIFACT: str(staged)},
            # The actionlab package (the folder above this one) and workloads: what pyfunc.py imports.
            code_paths=[str(Path(__file__).parents[1]), str(Path(workloads.__file__).parent)],
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

    c = tracking.client()
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
    checkpoint = run.data.tags.get(tracking.CHECKPOINT_URI_TAG, "")
    if checkpoint:
        tags["checkpoint"] = checkpoint
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="actionlab-register-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{run_id}/{artifact_path}", dst_path=tmp, tracking_uri=tracking.tracking_uri()
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
