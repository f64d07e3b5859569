"""Official checkpoints -> actionlab model directories (`actionlab weights import`).

Each method's released checkpoints are state dicts in its official repository's own layout: DataParallel
`module.` prefixes, nested under `state_dict` / `model_state_dict` / `fusion_model_state_dict`, with the
official module names. A `Converter` renames those keys onto the workload's own (ordered regex rules,
every key must match exactly one rule or be listed as having no counterpart), applies the few
structural changes (TAM's three 1x1 convs -> one grouped conv), and checks every shape against the
workload built with the user's `--num-classes`, `--frames` and params. The result is written exactly as
training writes a checkpoint (`model.safetensors` + `meta.json`), so `predict`, `eval`, `register` and
`workload.init_from` accept it.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from workloads.afnet import OFFICIAL_BACKBONE_RULES as AFNET_BACKBONE_RULES
from workloads.afnet import OFFICIAL_MBV3_RULES as AFNET_MBV3_RULES
from workloads.registry import without_weights

from .. import __version__, tracking
from ..config import flatten
from .meta import ModelMeta

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module")


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported; the message names the file and the fix."""


@dataclass(frozen=True)
class Converter:
    """How one method's official state dict maps onto its workload.

    rules: (official-key regex, our-key template) in order; the first rule whose regex matches the
        whole key renames it (`re.fullmatch(...).expand(template)`); template None drops the key
        (a buffer or tensor with no counterpart, e.g. CLIP's text tower when only the classifier is kept).
    hints: (our-key regex, workload param) pairs: a shape that differs on a matching key most likely
        means that param differs between the checkpoint and the build (frames, classes, widths).
    key_hints: the same for keys one side lacks (depth: blocks that exist on one side only).
    prepare: a whole-dict step after renaming (e.g. fusing TAM's convs), given (state, our model).
    signature: regexes of official keys only this method's checkpoints have (to name another
        method's checkpoint as such).
    """

    workload: str
    paper: str
    rules: tuple
    hints: tuple = ()
    key_hints: tuple = ()
    prepare: Callable | None = None
    signature: tuple = ()
    nested: tuple = NESTED_KEYS
    zoo: tuple = ()  # released checkpoints: (file, dataset, frames, params, paper top-1, note)
    extra_meta: dict = field(default_factory=dict)


_CONVERTERS: dict[str, Converter] = {}


def register_converter(conv: Converter) -> Converter:
    _CONVERTERS[conv.workload] = conv
    return conv


def converter(workload: str) -> Converter:
    if workload not in _CONVERTERS:
        raise CheckpointError(
            f"no importer for workload '{workload}'; official checkpoints can be imported for: {sorted(_CONVERTERS)}"
        )
    return _CONVERTERS[workload]


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


def rename(conv: Converter, state: dict[str, torch.Tensor], *, path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Official keys -> ours by `conv.rules`; every key must match a rule."""
    rules = [(re.compile(pattern), template) for pattern, template in conv.rules]
    out, unmapped = {}, []
    for key, value in state.items():
        for regex, template in rules:
            m = regex.fullmatch(key)
            if m:
                if template is not None:
                    out[_expand(m, template)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        other = _guess_method(state, exclude=conv.workload)
        if other or len(unmapped) > len(state) // 2:
            what = f"a checkpoint of '{other}'" if other else "not a checkpoint of this method"
            raise CheckpointError(
                f"{path}: {what} ({len(unmapped)} of {len(state)} keys are not {conv.paper} names, e.g. "
                f"{unmapped[:4]}); import it with the workload it was trained with"
                + (f": actionlab weights import {other} ..." if other else "")
            )
        raise CheckpointError(
            f"{path}: {len(unmapped)} keys have no counterpart in workload '{conv.workload}': {unmapped[:6]}; "
            "the checkpoint was trained with a different architecture option (see --set)"
        )
    return out


def _expand(m: re.Match, template: str) -> str:
    """`m.expand(template)`, then `{sN}` -> N - 1 (official 1-based stage numbers -> our 0-based indices)."""
    return re.sub(r"\{s(\d+)\}", lambda s: str(int(s.group(1)) - 1), m.expand(template))


def _guess_method(state: dict, *, exclude: str) -> str:
    for name, conv in _CONVERTERS.items():
        if name != exclude and conv.signature and any(re.search(s, k) for s in conv.signature for k in state):
            return name
    return ""


def check_against(conv: Converter, ours: dict, model_state: dict, *, path: str, build: str) -> None:
    """Same keys, same shapes as the built model, else one error naming both sides and the param."""
    missing = sorted(set(model_state) - set(ours))
    extra = sorted(set(ours) - set(model_state))
    shapes = [(k, tuple(ours[k].shape), tuple(model_state[k].shape)) for k in sorted(set(ours) & set(model_state))
              if ours[k].shape != model_state[k].shape]
    if not (missing or extra or shapes):
        return
    params = []
    for keys, hints in (([k for k, _, _ in shapes], conv.hints), (missing + extra, conv.key_hints or conv.hints)):
        for key in keys:
            for pattern, param in hints:  # the first matching hint of each key
                if re.search(pattern, key):
                    if param not in params:
                        params.append(param)
                    break
    parts = []
    if shapes:
        parts.append("shapes differ (checkpoint vs build): " + "; ".join(f"{k} {a} vs {b}" for k, a, b in shapes[:4]))
    if missing:
        parts.append(f"the build has {len(missing)} tensors the checkpoint lacks, e.g. {missing[:4]}")
    if extra:
        parts.append(f"the checkpoint has {len(extra)} tensors the build lacks, e.g. {extra[:4]}")
    hint = (f"; the checkpoint was probably trained with a different {' / '.join(params)}: set it to the "
            "checkpoint's value") if params else "; check the workload params (--set) against the release"
    raise CheckpointError(f"{path} does not fit workload '{conv.workload}' built as {build}: " + "; ".join(parts) + hint)


def convert(workload: str, state: dict, model, *, path: str = "checkpoint", build: str = "") -> dict:
    """An official state dict -> a state dict that `model` loads strictly."""
    conv = converter(workload)
    ours = rename(conv, state, path=path)
    if conv.prepare is not None:
        ours = conv.prepare(ours, model)
    model_state = model.state_dict()
    check_against(conv, ours, model_state, path=path, build=build or workload)
    return {k: ours[k].to(model_state[k].dtype) for k in model_state}


def import_checkpoint_model(
    workload: str, checkpoint: str | Path, *, num_classes: int, num_frames: int, params: dict | None = None
):
    """Builds `workload` and loads the official checkpoint into it (strict). Returns the model."""
    from workloads import get_workload

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
    from workloads import get_workload

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
        staged = tracking.save_model_dir(Path(tmp) / "model", model, meta)
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
    meta = tracking.read_meta(model_dir)
    run_id = tracking.start_run("official-checkpoints", f"{workload}-{meta.source['official_checkpoint']}",
                                tags={"source": "official", "paper": conv.paper})
    tracking.log_params(run_id, {"workload.name": workload, "data.name": dataset,
                                 "clip.num_frames": meta.preprocessing.num_frames,
                                 **flatten({"workload": {"params": dataclasses.asdict(meta.params)}})})
    tracking.log_artifacts(run_id, model_dir, tracking.CHECKPOINT_ARTIFACT)
    tracking.end_run(run_id)
    # The same registration as a trained run's (whatever form the registry gives versions), without the
    # alias: the version's top-1 is the paper's, not one measured here.
    info = tracking.register(run_id, name, alias="")
    tags = {"source": "official", "paper": conv.paper, "workload": workload, "dataset": dataset,
            "frames": str(meta.preprocessing.num_frames), "paper_top1": str(paper_top1),
            "checkpoint": meta.source["official_checkpoint"]}
    c = tracking.client()
    for key, value in tags.items():
        c.set_model_version_tag(name, info["version"], key, value)
    c.update_model_version(name, info["version"], description=f"Official {conv.paper} checkpoint, imported by actionlab")
    return {"name": name, "version": info["version"], "run_id": run_id, "tags": tags}


# -- the methods ----------------------------------------------------------------------------------

# AFNet (`ops/backbone/AF_ResNet.py` inside `ops/models.py`'s TSN; main.py saves {'state_dict': DDP state}).
register_converter(Converter(
    workload="afnet",
    paper="AFNet (NeurIPS 2022)",
    rules=(
        *((rf"base_model\.{pattern}", f"backbone.{template}") for pattern, template in AFNET_BACKBONE_RULES),
        *((rf"base_model\.{pattern}", f"backbone.{template}") for pattern, template in AFNET_MBV3_RULES),
        (r"base_model\.fc\.3\.(.+)", r"fc.\1"),  # AF-MobileNetV3: its fc.0 is the 960 -> 1280 head Linear
        (r"new_fc\.(.+)", r"fc.\1"),
        (r"base_model\.fc\.(.+)", r"fc.\1"),  # dropout 0: the backbone's own fc is the classifier
    ),
    hints=((r"navigation\.\d+\.temporal", "frames (--frames)"), (r"^fc\.", "classes (--num-classes)"),
           (r"^backbone\.", "width / alpha / patch_groups (--set)")),
    key_hints=((r"^backbone\.(layer[015]|head_)", "backbone (--set backbone=mobilenetv3 for AF-MobileNetV3)"),
               (r"(stages\.\d+\.(ample|focal|navigation)\.\d+|layer4\.\d+)\.", "depth (--set layers=...)"),),
    signature=(r"\.list_gen\.\d+\.conv_gs\.", r"\.list_gen[23]\.\d+\.conv_gs\."),
))


# CLIP-style residual attention blocks (OpenAI CLIP, Text4Vis' header, SLLM's FFRes) -> timm `Block`.
_CLIP_BLOCK = (
    (r"ln_1\.(weight|bias)", r"norm1.{}"),
    (r"ln_2\.(weight|bias)", r"norm2.{}"),
    (r"attn\.in_proj_(weight|bias)", r"attn.qkv.{}"),
    (r"attn\.out_proj\.(weight|bias)", r"attn.proj.{}"),
    (r"mlp\.c_fc\.(weight|bias)", r"mlp.fc1.{}"),
    (r"mlp\.c_proj\.(weight|bias)", r"mlp.fc2.{}"),
)


def _clip_block_rules(official: str, ours: str) -> tuple:
    """Rules for `<official>.resblocks.N.*` -> `<ours>.blocks.N.*` (official is a regex prefix)."""
    return tuple(
        (rf"{official}\.resblocks\.(\d+)\.{part}", rf"{ours}.blocks.\1." + target.format(r"\2"))
        for part, target in _CLIP_BLOCK
    )


def _prepare_sllm(state: dict, model) -> dict:
    """CLIP visual layout -> timm's (class token, position table, transposed projection); FFRes keeps the
    first rows of the official 77-row position table (only 2 are ever used); the class text embeddings
    come from `text_embeddings_file` (the checkpoint holds the image side only)."""
    own = model.state_dict()
    out = dict(state)
    if "encoder.cls_token" in out:
        out["encoder.cls_token"] = out["encoder.cls_token"].reshape(1, 1, -1)
    if "encoder.pos_embed" in out and out["encoder.pos_embed"].dim() == 2:
        out["encoder.pos_embed"] = out["encoder.pos_embed"].unsqueeze(0)
    if "encoder.head.weight" in out:
        out["encoder.head.weight"] = out["encoder.head.weight"].t()
        out["encoder.head.bias"] = torch.zeros(out["encoder.head.weight"].shape[0])
    table = out.get("restorer.pos_embed")
    if table is not None and "restorer.pos_embed" in own and table.shape[0] > own["restorer.pos_embed"].shape[0]:
        out["restorer.pos_embed"] = table[: own["restorer.pos_embed"].shape[0]]
    if "classifier.text_embeddings" in own:
        out["classifier.text_embeddings"] = own["classifier.text_embeddings"]
    elif "classifier.logit_scale" in out:
        raise CheckpointError(
            "SLLM checkpoints classify by cosine similarity to the CLIP text embeddings of the class names, "
            "which the checkpoint does not hold (Text4Vis computes them at start-up with the CLIP text tower): "
            "pass --set text_embeddings_file=FILE with the (classes, 512) embeddings of your class list"
        )
    return out


register_converter(Converter(
    workload="sllm",
    paper="SLLM (ACM MM 2023)",
    rules=(
        (r"visual\.conv1\.weight", r"encoder.patch_embed.proj.weight"),
        (r"visual\.class_embedding", r"encoder.cls_token"),
        (r"visual\.positional_embedding", r"encoder.pos_embed"),
        (r"visual\.ln_pre\.(weight|bias)", r"encoder.norm_pre.\1"),
        (r"visual\.ln_post\.(weight|bias)", r"encoder.norm.\1"),
        (r"visual\.proj", r"encoder.head.weight"),
        *_clip_block_rules(r"visual\.transformer", "encoder"),
        (r"fusion_model\.frame_position_embeddings\.weight", r"header.pos_embed"),
        *_clip_block_rules(r"fusion_model\.transformer", "header"),
        (r"restore_frame_position_embeddings\.weight", r"restorer.pos_embed"),
        *_clip_block_rules(r"restore_model", "restorer"),
        (r"logit_scale", r"classifier.logit_scale"),
    ),
    hints=((r"^encoder\.pos_embed", "img_size_px / backbone patch size (--set)"),
           (r"^encoder\.", "backbone (ViT-B/16 vs B/32: --set backbone=...)"),
           (r"^restorer\.", "drop_rate / restore (--set)"),
           (r"^header\.blocks", "header_depth (--set)"),
           (r"^classifier\.", "classes (--num-classes, text_embeddings_file)")),
    prepare=_prepare_sllm,
    signature=(r"restore_model\.resblocks\.", r"fusion_model\.frame_position_embeddings"),
))


# 2D ResNets in torchvision names (IBM's `models/twod_models/resnet.py` and MIT TSM's `ops/models.py`
# both build torchvision ResNets; timm's ResNet has the same names). IBM saves the bare network
# (`fc` = classifier); MIT wraps it as `base_model` with the classifier in `new_fc` (or `base_model.fc`
# with dropout 0), and its temporal pool wraps layer2 (`base_model.layer2.net.*`).
_RESNET_CLASSIFIER = (
    (r"new_fc\.(weight|bias)", r"fc.\1"),
    (r"(?:base_model\.)?fc\.(weight|bias)", r"fc.\1"),
)
_RESNET_HINTS = ((r"^fc\.", "classes (--num-classes)"), (r"tam\.", "TAM options (blend_frames, depthwise)"),
                 (r"layer\d\.\d+\.", "depth / backbone (--set)"))


def _resnet_rules(conv1: str = r"conv1") -> tuple:
    """Backbone keys of either repo -> `backbone.*`; block conv1 renamed to `conv1` + suffix."""
    return (
        *_RESNET_CLASSIFIER,
        (r"(?:base_model\.)?layer2\.net\.(\d+)\.conv1\.(.+)", rf"backbone.layer2.\1.{conv1}.\2"),
        (r"(?:base_model\.)?layer2\.net\.(.+)", r"backbone.layer2.\1"),
        (r"(?:base_model\.)?(layer\d\.\d+)\.conv1\.weight", rf"backbone.\1.{conv1}.weight"),
        (r"(?:base_model\.)?((?:conv1|bn1|layer\d)\..+)", r"backbone.\1"),
    )


register_converter(Converter(
    workload="tsn",
    paper="TSN (ECCV 2016; IBM action-recognition-pytorch / MIT TSM repo)",
    rules=_resnet_rules(),
    hints=_RESNET_HINTS,
    signature=(),
))

register_converter(Converter(
    workload="tsm",
    paper="TSM (ICCV 2019)",
    rules=(
        *_RESNET_CLASSIFIER,
        (r"base_model\.layer2\.net\.(.+)", r"backbone.layer2.\1"),  # --temporal_pool
        (r"base_model\.((?:conv1|bn1|layer\d)\..+)", r"backbone.\1"),  # blockres: conv1.net.*; block: N.net.*
    ),
    hints=_RESNET_HINTS,
    signature=(r"layer\d\.\d+\.(conv1\.)?net\.",),
))

_TAM_PARTS = {"prev_se": 0, "curr_se": 1, "next_se": 2}


def _prepare_tam(state: dict, model) -> dict:
    """IBM's k separate per-offset 1x1 convs (`prev_se`, `curr_se`, `next_se`, or `blending_layers.j`)
    -> our one grouped conv whose output channel c*k + j is channel c's response for offset j - k//2."""
    out, parts = {}, {}
    for key, value in state.items():
        m = re.fullmatch(r"(.+\.conv1\.tam\.conv\.weight)#(\d+)", key)
        if m:
            parts.setdefault(m.group(1), {})[int(m.group(2))] = value
        else:
            out[key] = value
    for key, by_offset in parts.items():
        k = len(by_offset)
        ws = [by_offset[j] for j in range(k)]  # each (C, C_in per group, 1, 1)
        out[key] = torch.stack(ws, 1).flatten(0, 1)  # (C, k, C_in/g, 1, 1) -> (C*k, C_in/g, 1, 1)
    return out


register_converter(Converter(
    workload="tam",
    paper="TAM (IBM action-recognition-pytorch, CVPR 2021)",
    rules=(
        *_RESNET_CLASSIFIER,
        *((rf"(layer\d\.\d+)\.tam\.{name}\.fc1\.weight", rf"backbone.\1.conv1.tam.conv.weight#{j}")
          for name, j in _TAM_PARTS.items()),
        (r"(layer\d\.\d+)\.tam\.blending_layers\.(\d+)\.fc1\.weight", r"backbone.\1.conv1.tam.conv.weight#\2"),
        (r"(layer\d\.\d+)\.conv1\.weight", r"backbone.\1.conv1.net.weight"),
        (r"((?:conv1|bn1|layer\d)\..+)", r"backbone.\1"),
    ),
    hints=_RESNET_HINTS,
    prepare=_prepare_tam,
    signature=(r"\.tam\.(prev_se|blending_layers)",),
))


# IBM's 3D networks (`models/threed_models/{i3d_resnet,s3d_resnet,i3d,s3d}.py`): bare module names,
# the classifier in `fc`; ours put the trunk under `backbone.` and the classifier in `head.fc`.
for _name, _paper in (("i3d", "I3D (IBM action-recognition-pytorch)"), ("r3d", "ResNet3D (IBM i3d_resnet)"),
                      ("s3d", "S3D (IBM action-recognition-pytorch)"), ("r2plus1d", "R(2+1)D (IBM s3d_resnet)")):
    register_converter(Converter(
        workload=_name,
        paper=_paper,
        rules=((r"fc\.(weight|bias)", r"head.fc.\1"), (r"(.+)", r"backbone.\1")),
        hints=((r"^head\.fc", "classes (--num-classes)"), (r"layer\d\.\d+\.|inception", "depth / backbone (--set)"),
               (r"conv\d?\.?weight|conv_t|conv_s", "inflation: i3d vs s3d / r2plus1d (another method's checkpoint)")),
    ))


# HSAR (`HVG808/HSAR_repo`, an mmaction2 0.x overlay: {"meta", "state_dict": {"backbone.*", "cls_head.*"}}).
_HSAR_BLOCK = (
    (r"0\.norm\.(weight|bias)", "norm1.{}"),
    (r"0\.fn\.to_qkv\.weight", "qkv.weight"),
    (r"0\.fn\.to_out\.0\.(weight|bias)", "proj.0.{}"),
    (r"1\.norm\.(weight|bias)", "norm2.{}"),
    (r"1\.fn\.net\.(0|3)\.(weight|bias)", "mlp.{}.{}"),
)


def _hsar_block_rules(official: str, ours: str) -> tuple:
    rules = []
    for part, target in _HSAR_BLOCK:
        groups = [rf"\{i}" for i in range(2, 2 + target.count("{}"))]
        rules.append((rf"{official}\.layers\.(\d+)\.{part}", rf"{ours}.blocks.\1." + target.format(*groups)))
    return tuple(rules)


def _prepare_hsar(state: dict, model) -> dict:
    """The TMT's `ln_post` only feeds the key-frame predictor through a detached tensor, so it never
    trains: ours has no affine there. A checkpoint whose ln_post is not the identity cannot be represented."""
    out = dict(state)
    w, b = out.pop("#temporal.ln_post.weight", None), out.pop("#temporal.ln_post.bias", None)
    if (w is not None and w.device.type != "meta" and not torch.all(w == 1)) or (
            b is not None and b.device.type != "meta" and not torch.all(b == 0)):
        raise CheckpointError(
            "HSAR checkpoint: backbone.temporal_enc.ln_post has trained (non-identity) weights; the official "
            "training never updates them (detached input), so this checkpoint was not trained by the official code"
        )
    return out


register_converter(Converter(
    workload="hsar",
    paper="HSAR (ACM ICMR 2023)",
    rules=(
        (r"backbone\.temporal_enc\.cls_token", r"temporal.cls_token"),
        (r"backbone\.temporal_enc\.pre_conv\.(\d)\.(weight|bias)", r"temporal.stem.\1.\2"),
        (r"backbone\.temporal_enc\.proj\.weight", None),  # built but unused: pre_conv is the stem
        (r"backbone\.temporal_enc\.position_enc\.pos_table", None),  # the fixed sinusoid table (recomputed)
        (r"backbone\.temporal_enc\.ln_pre\.(weight|bias)", r"temporal.norm_pre.\1"),
        (r"backbone\.temporal_enc\.ln_post\.(weight|bias)", r"#temporal.ln_post.\1"),
        (r"backbone\.temporal_enc\.to_embedding\.1\.(weight|bias)", r"temporal.to_token.\1"),
        *_hsar_block_rules(r"backbone\.temporal_enc\.transformer", "temporal"),
        (r"backbone\.spatial_enc\.(.+)", r"spatial.\1"),
        (r"backbone\.pred_key\.(\d)\.(weight|bias)", r"key_predictor.\1.\2"),
        (r"backbone\.a_to_v\.0\.(weight|bias)", r"spatial_to_dim.\1"),
        (r"backbone\.fusion_cls", None),  # built but unused by the official forward
        (r"backbone\.fu_pre\.(weight|bias)", r"fusion.norm_pre.\1"),
        (r"backbone\.fu_post\.(weight|bias)", r"fusion.norm_post.\1"),
        *_hsar_block_rules(r"backbone\.fusion", "fusion"),
        (r"cls_head\.fc_cls\.(0|2)\.(weight|bias)", r"head.fc.\1.\2"),
    ),
    hints=((r"^head\.fc\.2", "classes (--num-classes)"), (r"key_predictor\.3", "frames (--frames)"),
           (r"^(temporal|fusion)\.", "dim / depth / frame_size_px / skip_mo (--set; Large: dim=3072)"),
           (r"^spatial\.", "spatial_backbone (ViT-B/16 iBOT)")),
    prepare=_prepare_hsar,
    signature=(r"temporal_enc\.transformer\.layers", r"backbone\.fu_pre\."),
))


# PySlowFast's MViT and the official UniFormer: our parameter names are theirs (one rule each).
register_converter(Converter(
    workload="mvitv2",
    paper="MViTv2 (CVPR 2022; PySlowFast)",
    rules=((r"((?:patch_embed|blocks|norm|head)\..+|cls_token)", r"\1"),),
    hints=((r"\.rel_pos_t$", "frames (--frames)"), (r"\.rel_pos_[hw]$", "img_size_px (--set)"),
           (r"^head\.", "classes (--num-classes)"), (r"^(blocks|patch_embed|norm|cls)", "embed_dim (--set)")),
    key_hints=((r"^blocks\.\d+\.", "depth / stage_starts (--set)"),),
    signature=(r"blocks\.\d+\.attn\.pool_q\.", r"blocks\.\d+\.attn\.rel_pos_t"),
    nested=("model_state", *NESTED_KEYS),
))

register_converter(Converter(
    workload="uniformer",
    paper="UniFormer (ICLR 2022)",
    rules=((r"((?:patch_embed\d|blocks\d|norm|head)\..+)", r"\1"),),
    hints=((r"^head\.", "classes (--num-classes)"), (r"^(blocks|patch_embed|norm)", "embed_dims / head_dim (--set)")),
    key_hints=((r"^blocks\d\.\d+\.", "depths (--set depths=...)"),),
    signature=(r"blocks1\.\d+\.conv1\.", r"patch_embed4\.proj\."),
    nested=("model_state", *NESTED_KEYS),
))

# ty-97/H2CN: a VideoNet around `build_h2cn` (its unused `conv1_temp` only seeded the motion stem).
register_converter(Converter(
    workload="h2cn",
    paper="H2CN (ACM MM 2022)",
    rules=(
        (r"base_model\.conv1_temp\.(weight|bias)", None),
        (r"base_model\.layer(\d)_bak\.(\d+)\.mtdin\.(.+)", r"layer\1.\2.chgc.\3"),
        (r"base_model\.layer(\d)_bak\.(.+)", r"layer\1.\2"),
        (r"base_model\.(fhgc\d)\.0\.spaAgg\.weight", r"\1.0.spatial.weight"),
        (r"base_model\.(fhgc\d)\.0\.convt\.weight", r"\1.0.temporal.weight"),
        (r"base_model\.((?:fhgc\d|conv_fhgc|conv1|bn1)\..+)", r"\1"),
        (r"new_fc\.(weight|bias)", r"fc.\1"),
    ),
    hints=((r"^fc\.", "classes (--num-classes)"), (r"\.chgc\.", "reduction (--set)")),
    key_hints=((r"^layer\d\.\d+\.", "depths (--set depths=...)"),),
    signature=(r"\.mtdin\.convt\.", r"base_model\.fhgc1\."),
))


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
