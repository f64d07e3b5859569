"""Model folders: a safetensors weights file beside a `meta.json` record, written and read back.

A folder is what training saves at its end, what the registry logs as a run's `checkpoint`
artifact and what every loader rebuilds a network from (`load_model`): the workload is built with
the params recorded in meta.json and the weights are loaded from safetensors, never unpickled.
`resolve_model_dir` turns a registry or run URI into such a local folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import tracking
from .meta import ModelMeta, ModelMetaError

MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
# The name of a model folder as a run artifact and as the artifact of the pyfunc model logged over it.
CHECKPOINT_ARTIFACT = "checkpoint"


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
    """A network rebuilt from a model folder, with the record it was rebuilt from."""

    model: object  # torch.nn.Module in eval mode
    meta: ModelMeta  # the recorded workload, params, classes and preprocessing
    source: str  # the local folder it was read from


def resolve_model_dir(uri: str) -> Path:
    """`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/ID/checkpoint` or a local dir -> local dir."""
    import mlflow

    if uri.startswith("models:/"):
        name_ref = uri[len("models:/") :]
        c = tracking.client()
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
        mlflow.set_tracking_uri(tracking.tracking_uri())
        logged = tracking.client().get_logged_model(source[len("models:/") :])
        source = f"{logged.artifact_location.rstrip('/')}/artifacts/{CHECKPOINT_ARTIFACT}"
    if source.startswith(("runs:/", "mlflow-artifacts:", "s3://", "file:")) and not Path(source).is_dir():
        mlflow.set_tracking_uri(tracking.tracking_uri())
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking.tracking_uri()))
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
        ValueError: meta.json is not JSON; `meta.ModelMetaError` when the current code cannot
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
        meta.ModelMetaError: the current code cannot build what the checkpoint records.
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
