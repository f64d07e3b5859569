"""Official checkpoints -> actionlab model directories (`actionlab weights import`), and the zoo of them.

Each method's released checkpoints are state dicts in its official repository's own layout: DataParallel
`module.` prefixes, nested under `state_dict` / `model_state_dict` / `model_state`, with the official
module names. Reading the file and unwrapping it is done here; renaming the keys onto the workload's
own is the method's `checkpoint_filter_fn`, kept beside the method (`workloads.layers.checkpoint`:
ordered regex rules, a few structural changes such as TAM's three 1x1 convs -> one grouped conv, and a
check of every shape against the workload built with the user's `--num-classes`, `--frames` and
params). The result is written exactly as training writes a checkpoint (`model.safetensors` +
`meta.json`), so `predict`, `eval`, `register` and `workload.init_from` accept it.

Loading never executes code: `torch.load(weights_only=True)` (plain tensors, dicts, numbers and
strings; no allow-list is needed for any released format this module reads).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from workloads import get_workload, list_workloads
# CheckpointError is the error of every import step, the converters' included (`weights.CheckpointError`).
from workloads.layers.checkpoint import NESTED_KEYS, BuildMismatch, CheckpointError, CheckpointFilter, UnmappedKeys
from workloads.registry import without_weights

from .. import __version__, tracking
from ..config import flatten
from . import folder, registry
from .meta import ModelMeta

def converter(workload: str) -> CheckpointFilter:
    """The checkpoint filter of `workload` (its module's `checkpoint_filter_fn`).

    Raises:
        CheckpointError: the workload has none (its authors released no checkpoint to import).
    """
    importable = _importable()
    if workload not in importable:
        raise CheckpointError(
            f"no importer for workload '{workload}'; official checkpoints can be imported for: {sorted(importable)}"
        )
    return importable[workload]


def _importable() -> dict[str, CheckpointFilter]:
    filters = {name: get_workload(name).checkpoint_filter_fn for name in list_workloads()}
    return {name: fn for name, fn in filters.items() if fn is not None}


# -- reading --------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict:
    """The tensors of an official checkpoint file (torch.save or safetensors), never running its code.

    Raises:
        CheckpointError: missing, truncated, not a checkpoint, or a pickle that needs code to load.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err}); download it again") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types; each gets a message naming the fix
        text = str(err)
        if "Weights only load failed" in text or "Unsupported global" in text or "GLOBAL" in text:
            found = re.search(r"(?:Unsupported global|GLOBAL)[: ]+(?:GLOBAL )?([\w.]+)", text)
            what = f" (it needs {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: the file holds pickled objects that only code can rebuild{what}; actionlab loads "
                "tensors only (weights_only loading). If you trust the file, open it once in a PyTorch session "
                "that allows full unpickling and save only its tensors: torch.save(checkpoint['state_dict'], 'clean.pth')"
            ) from None
        if isinstance(err, (EOFError, RuntimeError, zipfile.BadZipFile)) or "pickle" in text.lower():
            raise CheckpointError(
                f"{path}: truncated or not a PyTorch checkpoint ({_first_sentence(text) or type(err).__name__}); "
                "download it again and compare its size/sha256 with the release"
            ) from None
        raise
    return obj


def _first_sentence(text: str) -> str:
    return text.strip().splitlines()[0].split(". ")[0][:160] if text.strip() else ""


def official_state(obj, *, nested: tuple = NESTED_KEYS, path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwraps the training wrapper (`state_dict` / `model_state_dict` / ... nesting, `module.` prefixes)."""
    for _ in range(3):
        if isinstance(obj, dict) and not _all_tensors(obj):
            inner = next((obj[k] for k in nested if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not _all_tensors(obj):
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: no state dict of tensors found (top level: {keys}); expected the official training "
            f"checkpoint (a dict with one of {list(nested)}, or the state dict itself)"
        )
    state = dict(obj)
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _all_tensors(d: dict) -> bool:
    return all(isinstance(v, torch.Tensor) for v in d.values())


# -- mapping --------------------------------------------------------------------------------------


def convert(workload: str, state: dict, model, *, path: str = "checkpoint", build: str = "") -> dict:
    """An official state dict -> a state dict that `model` loads strictly (`workload`'s checkpoint filter),
    with errors that name the file, the build and, for another method's checkpoint, that method."""
    filter_fn = converter(workload)
    try:
        return filter_fn(state, model)
    except UnmappedKeys as err:
        other = _guess_method(state, exclude=workload)
        if other or len(err.unmapped) > err.num_keys // 2:
            what = f"a checkpoint of '{other}'" if other else "not a checkpoint of this method"
            raise CheckpointError(
                f"{path}: {what} ({err}); import it with the workload it was trained with"
                + (f": actionlab weights import {other} ..." if other else "")
            ) from None
        raise CheckpointError(
            f"{path}: {len(err.unmapped)} keys have no counterpart in workload '{workload}': {err.unmapped[:6]}; "
            "the checkpoint was trained with a different architecture option (see --set)"
        ) from None
    except BuildMismatch as err:
        raise CheckpointError(f"{path} does not fit workload '{workload}' built as {build or workload}: {err}") from None
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None


def _guess_method(state: dict, *, exclude: str) -> str:
    return next((name for name, fn in _importable().items() if name != exclude and fn.recognises(state)), "")


def import_checkpoint_model(
    workload: str, checkpoint: str | Path, *, num_classes: int, num_frames: int, params: dict | None = None
):
    """Builds `workload` and loads the official checkpoint into it (strict). Returns the model."""
    spec = get_workload(workload)
    conv = converter(workload)
    params = dict(params or {})
    state = official_state(read_checkpoint(checkpoint), nested=conv.nested, path=str(checkpoint))
    # The checkpoint replaces every weight: never download or read another.
    model = spec.build(params, num_classes=num_classes, num_frames=num_frames, weights=False)
    build = f"{params or 'defaults'}, {num_classes} classes, {num_frames} frames"
    model.load_state_dict(convert(workload, state, model, path=str(checkpoint), build=build), strict=True)
    return model.eval()


def import_checkpoint(
    workload: str,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    num_classes: int,
    num_frames: int,
    params: dict | None = None,
    class_names: list[str] | None = None,
    size_px: int = 224,
    resize_px: int = 256,
    stride: int = 1,
) -> Path:
    """Writes `out_dir/model.safetensors` + `meta.json` from an official checkpoint.

    Nothing is written to `out_dir` unless the whole import succeeds (it is built in a temporary
    folder beside it and moved into place).
    """
    spec = get_workload(workload)
    if class_names is not None and len(class_names) != num_classes:
        raise CheckpointError(f"--classes lists {len(class_names)} names but --num-classes is {num_classes}; make them agree")
    params = dict(params or {})
    resolved = spec.resolve_params(params)  # unknown params: the registry's error names the nearest field
    model = import_checkpoint_model(workload, checkpoint, num_classes=num_classes, num_frames=num_frames, params=params)
    fmt = spec.input_for(resolved, num_frames=num_frames, stride=stride, size_px=size_px, resize_px=resize_px)
    meta = ModelMeta(
        workload=workload,
        params=without_weights(resolved),  # every value; the weights are the checkpoint's
        classes=tuple(class_names or [f"class_{i}" for i in range(num_classes)]),
        preprocessing=fmt,
        source={"official_checkpoint": Path(checkpoint).name, "paper": converter(workload).paper},
        actionlab_version=__version__,
    )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; choose a new -o folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".import-") as tmp:
        staged = folder.save_model_dir(Path(tmp) / "model", model, meta)
        if out.exists():
            out.rmdir()
        shutil.move(str(staged), str(out))
    return out


def register_import(model_dir: str | Path, name: str, *, workload: str, dataset: str = "", paper_top1: str = "") -> dict:
    """Logs an imported model dir as an MLflow run and registers it, tagged source=official.

    The version is not given the `champion` alias: its top-1 is the paper's, not one measured here
    (`eval --model models:/NAME/VERSION` measures it on the user's copy of the dataset).
    """
    conv = converter(workload)
    meta = folder.read_meta(model_dir)
    run_id = tracking.start_run("official-checkpoints", f"{workload}-{meta.source['official_checkpoint']}",
                                tags={"source": "official", "paper": conv.paper})
    tracking.log_params(run_id, {"workload.name": workload, "data.name": dataset,
                                 "clip.num_frames": meta.preprocessing.num_frames,
                                 **flatten({"workload": {"params": dataclasses.asdict(meta.params)}})})
    tracking.log_artifacts(run_id, model_dir, folder.CHECKPOINT_ARTIFACT)
    tracking.end_run(run_id)
    # The same registration as a trained run's (whatever form the registry gives versions), without the
    # alias: the version's top-1 is the paper's, not one measured here.
    info = registry.register(run_id, name, alias="")
    tags = {"source": "official", "paper": conv.paper, "workload": workload, "dataset": dataset,
            "frames": str(meta.preprocessing.num_frames), "paper_top1": str(paper_top1),
            "checkpoint": meta.source["official_checkpoint"]}
    c = tracking.client()
    for key, value in tags.items():
        c.set_model_version_tag(name, info["version"], key, value)
    c.update_model_version(name, info["version"], description=f"Official {conv.paper} checkpoint, imported by actionlab")
    return {"name": name, "version": info["version"], "run_id": run_id, "tags": tags}


# -- the zoo: released checkpoints and the paper numbers they should reproduce (the seeds' tables) --


@dataclass(frozen=True)
class ZooEntry:
    name: str
    workload: str
    file: str  # the release's file name (matched against the imported checkpoint's name); "" = unnamed download
    dataset: str
    num_classes: int
    num_frames: int
    params: dict
    paper_top1: str  # as printed (1 clip x 1 crop unless the note says otherwise)
    source: str  # where the number and the file are listed

    def command(self) -> str:
        sets = " ".join(f"--set {k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in self.params.items())
        return (f"actionlab weights import {self.workload} {self.file or 'CHECKPOINT.pth.tar'} -o models/{self.name} "
                f"--num-classes {self.num_classes} --frames {self.num_frames}" + (f" {sets}" if sets else "")
                + f" --register {self.name} --zoo {self.name}")


_IBM = "IBM action-recognition-pytorch README (f32, --without_t_stride)"
_AF = "AFNet-pytorch README, Something-Something V1"
ZOO = (
    ZooEntry("ibm-k400-i3d-r50-f32", "i3d", "K400-I3D-ResNet-50-f32.pth.tar", "Kinetics-400", 400, 32,
             {"depth": 50, "without_t_stride": True}, "76.61", _IBM),
    ZooEntry("ibm-k400-i3d-r101-f32", "i3d", "K400-I3D-ResNet-101-f32.pth.tar", "Kinetics-400", 400, 32,
             {"depth": 101, "without_t_stride": True}, "77.80", _IBM),
    ZooEntry("ibm-ssv2-i3d-r50-f32", "i3d", "SSV2-I3D-ResNet-50-f32.pth.tar", "Something-Something V2", 174, 32,
             {"depth": 50, "without_t_stride": True}, "62.84", _IBM),
    ZooEntry("ibm-ssv2-i3d-r101-f32", "i3d", "SSV2-I3D-ResNet-101-f32.pth.tar", "Something-Something V2", 174, 32,
             {"depth": 101, "without_t_stride": True}, "64.29", _IBM),
    ZooEntry("ibm-k400-tam-r50-f32", "tam", "K400-TAM-ResNet-50-f32.pth.tar", "Kinetics-400", 400, 32,
             {"depth": 50, "without_t_stride": True}, "76.18", _IBM),
    ZooEntry("ibm-k400-tam-r101-f32", "tam", "K400-TAM-ResNet-101-f32.pth.tar", "Kinetics-400", 400, 32,
             {"depth": 101, "without_t_stride": True}, "77.61", _IBM),
    ZooEntry("ibm-ssv2-tam-r50-f32", "tam", "SSV2-TAM-ResNet-50-f32.pth.tar", "Something-Something V2", 174, 32,
             {"depth": 50, "without_t_stride": True}, "63.83", _IBM),
    ZooEntry("ibm-ssv2-tam-r101-f32", "tam", "SSV2-TAM-ResNet-101-f32.pth.tar", "Something-Something V2", 174, 32,
             {"depth": 101, "without_t_stride": True}, "65.32", _IBM),
    ZooEntry("afnet-tsm-r50-rt0.4-ssv1", "afnet", "", "Something-Something V1",
             174, 12, {"rt": 0.4, "eval_gating": "gumbel"}, "49.0", _AF),
    ZooEntry("afnet-tsm-r50-rt0.8-ssv1", "afnet", "", "Something-Something V1",
             174, 12, {"rt": 0.8, "eval_gating": "gumbel"}, "49.9", _AF),
    ZooEntry("afnet-tsm-r101-rt0.4-ssv1", "afnet", "", "Something-Something V1",
             174, 12, {"layers": [4, 8, 18, 3], "rt": 0.4, "eval_gating": "gumbel"}, "49.8", _AF),
    ZooEntry("afnet-tsm-mbv3-rt0.4-ssv1", "afnet", "", "Something-Something V1",
             174, 12, {"backbone": "mobilenetv3", "rt": 0.4, "eval_gating": "gumbel"}, "45.3", _AF),
    ZooEntry("afnet-tsm-mbv3-rt0.8-ssv1", "afnet", "", "Something-Something V1",
             174, 12, {"backbone": "mobilenetv3", "rt": 0.8, "eval_gating": "gumbel"}, "45.9", _AF),
    ZooEntry("afnet-r50-rt0.5-ssv1", "afnet", "", "Something-Something V1",
             174, 8, {"shift": False, "rt": 0.5, "eval_gating": "gumbel"}, "26.8", _AF),
    ZooEntry("afnet-r50-rt0.25-ssv1", "afnet", "", "Something-Something V1",
             174, 8, {"shift": False, "rt": 0.25, "eval_gating": "gumbel"}, "27.7", _AF),
    ZooEntry("hsar-base-k400", "hsar", "", "Kinetics-400", 400, 64, {}, "",
             "HSAR_repo README (HSAR-Base K400; no accuracy published)"),
    ZooEntry("hsar-base-k600", "hsar", "", "Kinetics-600", 600, 64, {}, "",
             "HSAR_repo README (HSAR-Base K600; no accuracy published)"),
    ZooEntry("hsar-base-sthv2", "hsar", "", "Something-Something V2", 174, 64, {}, "",
             "HSAR_repo README (HSAR-Base Sthv2; no accuracy published)"),
    ZooEntry("sllm-text4vis-hmdb-f16", "sllm", "", "HMDB-51", 51, 16,
             {"backbone": "vit_base_patch32_clip_quickgelu_224", "text_embeddings_file": "hmdb51_text.npy"}, "81.55",
             "SLLM README (backbone not named; configs say ViT-B/32)"),
    ZooEntry("mvitv2-s-16x4-k400", "mvitv2", "MViTv2_S_16x4_k400_f302660347.pyth", "Kinetics-400", 400, 16, {},
             "81.0", "PySlowFast projects/mvitv2 README (1 clip x 5 views, 224 px)"),
    ZooEntry("uniformer-s-16x4-k400", "uniformer", "uniformer_small_k400_16x4.pth", "Kinetics-400", 400, 16, {},
             "80.8", "UniFormer video_classification README (16x1x4: 4 clips, 224 px)"),
    ZooEntry("h2cn-r50-k400-f8", "h2cn", "", "Kinetics-400", 400, 8, {}, "76.9",
             "H2CN README (8 segments x 30 views)"),
    ZooEntry("h2cn-r50-k400-f16", "h2cn", "", "Kinetics-400", 400, 16, {}, "77.9",
             "H2CN README (16 segments x 30 views)"),
)


def zoo_entry(checkpoint: str | Path) -> ZooEntry | None:
    """The zoo row of a checkpoint identified by its release file name, else None.

    Never guessed from workload, frames and classes: a fine-tuned checkpoint of the same shape would be
    tagged with the paper's top-1. Unnamed releases are identified with `--zoo NAME`.
    """
    name = Path(checkpoint).name
    return next((z for z in ZOO if z.file and z.file == name), None)


def zoo_by_name(name: str) -> ZooEntry:
    for z in ZOO:
        if z.name == name:
            return z
    raise CheckpointError(f"no zoo entry {name!r}; `actionlab weights zoo` lists: {[z.name for z in ZOO]}")
