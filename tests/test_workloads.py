"""Every registered workload, through the same checks, at its tiny CPU size.

New workloads are picked up from `list_workloads()` automatically. A workload whose tiny variant
needs a larger clip than (T=4, 32 px) registers it, e.g. `register_workload(..., tiny_clip={"num_frames":
8, "size_px": 64})`; one with further architectures behind a param registers their own tiny params (used
instead of `tiny`), e.g. `tiny_variants={"mobilenetv3": {"backbone": "mobilenetv3"}}`, and each goes
through the model checks too (as "name[variant]").
"""

import dataclasses
import math
import os
import re
import typing

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from actionlab.flops import measure
from actionlab.train.epoch import TrainStep
from workloads import get_workload, list_workloads
from workloads import registry
from workloads.layers import Method, as_method
from workloads.params import RANGE, choices
from workloads.registry import SAMPLINGS, InputFormat

NUM_CLASSES = 5
BATCH = 2
DEFAULT_CLIP = {"num_frames": 4, "size_px": 32}

WORKLOADS = list_workloads()


def _variants(name: str) -> dict:
    return get_workload(name).tiny_variants


MODELS = WORKLOADS + [f"{name}[{v}]" for name in WORKLOADS for v in _variants(name)]


def _tiny(name: str):
    """(model, clips, labels) for workload `name` (or `name[variant]`) at its tiny size; train mode."""
    name, _, variant = name.rstrip("]").partition("[")
    spec = get_workload(name)
    clip = {**DEFAULT_CLIP, **spec.tiny_clip}
    torch.manual_seed(0)
    overrides = _variants(name)[variant] if variant else spec.tiny  # a variant's own tiny params
    model = spec.build(overrides, num_classes=NUM_CLASSES, num_frames=clip["num_frames"])
    frames = spec.input_for(overrides, num_frames=clip["num_frames"]).clip_frames  # snippets: segments x snippet frames
    clips = torch.randn(BATCH, frames, 3, clip["size_px"], clip["size_px"])
    labels = torch.arange(BATCH) % NUM_CLASSES
    return model, clips, labels


def test_registry_is_not_empty():
    assert {"tsn", "tsm"} <= set(WORKLOADS)


@pytest.mark.parametrize("name", WORKLOADS)
def test_spec_declares_what_the_platform_needs(name):
    spec = get_workload(name)
    fmt = spec.input_for(spec.tiny)
    assert spec.sampling in SAMPLINGS and fmt.sampling in SAMPLINGS
    assert dataclasses.is_dataclass(spec.params_cls) and spec.params_cls.__dataclass_params__.frozen
    defaults = spec.params_cls()  # paper defaults: constructible with no arguments
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(defaults, dataclasses.fields(defaults)[0].name, None)
    spec.resolve_params(spec.tiny)  # tiny overrides name real fields
    assert spec.summary, f"{name}: the module needs a docstring whose first line names the paper"
    assert len(fmt.mean) == len(fmt.std) == 3


def test_the_input_format_joins_the_workloads_part_and_the_runs_clip():
    fmt = get_workload("h2cn").input_for(get_workload("h2cn").tiny, num_frames=8, stride=2, size_px=32, resize_px=36)
    assert (fmt.sampling, fmt.snippet_frames, fmt.num_frames, fmt.clip_frames) == ("snippets", 5, 8, 40)
    assert (fmt.stride, fmt.size_px, fmt.resize_px) == (2, 32, 36)
    # JSON lists and ints read back as the same format
    assert InputFormat(sampling="segments", mean=[0, 0.5, 1], std=[1, 1, 1]) == InputFormat(
        sampling="segments", mean=(0.0, 0.5, 1.0), std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="only `snippets` sampling takes more than one frame"):
        InputFormat(sampling="segments", snippet_frames=5)
    with pytest.raises(ValueError, match="sampling: .dense. is not one of"):
        InputFormat(sampling="dense")
    with pytest.raises(ValueError, match="num_frames=0"):
        get_workload("tsm").input_for(num_frames=0)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_determinism_and_macs(name):
    model, clips, labels = _tiny(name)
    assert sum(p.numel() for p in model.parameters()) > 0

    # Backward through what the train loop calls: the method's training_step (default: CE on forward).
    TrainStep(as_method(model))(clips, labels)["loss"].backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    no_grad = [n for n, p in trainable.items() if p.grad is None]
    assert not no_grad, f"{name}: trainable parameters without a gradient: {no_grad[:10]}"
    not_finite = [n for n, p in trainable.items() if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"{name}: non-finite gradients in {not_finite[:10]}"

    model.eval()
    with torch.no_grad():
        first, second = model(clips), model(clips)
    assert first.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second), f"{name}: eval-mode forward is not deterministic"

    compute = measure(model, (1, *clips.shape[1:]))
    assert compute.gmacs > 0 and compute.params == sum(p.numel() for p in model.parameters())
    assert not model.training, "measure() must leave the model's mode alone"


@pytest.mark.parametrize("name", MODELS)
def test_method_hooks_follow_the_contract(name):
    model, clips, labels = _tiny(name)
    method = as_method(model)
    method.on_epoch_start(0, 10)  # the loop ignores any return value
    method.on_epoch_start(9, 10)
    out = method.training_step(clips, labels)
    assert isinstance(out, dict) and ("loss" in out or "logits" in out), f"{name}: training_step returned {out!r}"
    if "loss" in out:
        assert out["loss"].dim() == 0 and out["loss"].requires_grad and torch.isfinite(out["loss"])
    if "logits" in out:
        assert out["logits"].shape == (BATCH, NUM_CLASSES)
    for key, value in out.items():
        if key not in ("loss", "logits"):
            scalar = value.item() if torch.is_tensor(value) else value
            assert isinstance(scalar, (int, float)) and math.isfinite(scalar), f"{name}: '{key}' is not a scalar"
    method.on_step_end()
    grouped = [p for g in method.param_groups() for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}), f"{name}: a parameter in two optimiser groups"
    assert {id(p) for p in model.parameters() if p.requires_grad} <= {id(p) for p in grouped}, \
        f"{name}: param_groups() leaves trainable parameters out of the optimiser"
    variants = method.eval_variants()
    assert variants and all(isinstance(m, torch.nn.Module) for m in variants.values())
    assert all(isinstance(v, float) or isinstance(v, int) for v in method.eval_stats().values())


def test_a_plain_module_is_adapted_once_and_trains_with_cross_entropy():
    plain = torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(4 * 3 * 2 * 2, NUM_CLASSES))
    method = as_method(plain)
    assert isinstance(method, Method) and as_method(method) is method
    assert method.eval_variants() == {"": method} and method.eval_stats() == {}
    clips, labels = torch.randn(BATCH, 4, 3, 2, 2), torch.arange(BATCH)
    out = TrainStep(method, label_smoothing=0.1)(clips, labels)
    expected = F.cross_entropy(plain(clips), labels, label_smoothing=0.1)
    assert torch.allclose(out["loss"], expected)
    hooked = get_workload("afnet").build(get_workload("afnet").tiny, num_classes=NUM_CLASSES, num_frames=4)
    assert as_method(hooked) is hooked  # a Method subclass is used as it is


def test_unknown_workload_names_the_nearest():
    with pytest.raises(KeyError, match=r"unknown workload 'tsmm'; did you mean 'tsm'\?"):
        get_workload("tsmm")


@pytest.mark.parametrize("name", WORKLOADS)
def test_unknown_param_names_the_nearest(name):
    spec = get_workload(name)
    field = max((f.name for f in dataclasses.fields(spec.params_cls)), key=len)
    typo = field[:-1] + "x" + field[-1]
    with pytest.raises(ValueError, match=f"did you mean '{field}'"):
        spec.build({typo: 1}, num_classes=NUM_CLASSES, num_frames=4)


def test_wrong_param_type_is_an_error():
    with pytest.raises(ValueError, match="fold_div"):
        get_workload("tsm").build({"fold_div": "eight"}, num_classes=NUM_CLASSES, num_frames=4)


# One validator (`workloads.params`): choices, ranges and wrapped params, checked before any builder runs.


def _choice_fields(name: str) -> list[tuple[str, str, tuple]]:
    hints = typing.get_type_hints(get_workload(name).params_cls)
    return [(name, key, choices(hint)) for key, hint in hints.items() if typing.get_origin(hint) is typing.Literal]


CHOICE_FIELDS = [row for name in WORKLOADS for row in _choice_fields(name)]
RANGED_FIELDS = [(name, f.name, f.metadata[RANGE]) for name in WORKLOADS
                 for f in dataclasses.fields(get_workload(name).params_cls) if RANGE in f.metadata]


def test_the_choice_params_are_literals():
    declared = {(name, key) for name, key, _ in CHOICE_FIELDS}
    assert {("tsm", "shift_place"), ("afnet", "backbone"), ("afnet", "eval_gating"), ("afnet", "execution"),
            ("svmix", "method"), ("svmix", "ema_init"), ("svmix", "block_lr_schedule"), ("tam", "blend"),
            ("i3d", "backbone"), ("s3d", "backbone"), ("sllm", "res_loss"), ("hsar", "motion")} <= declared


@pytest.mark.parametrize("name,key,allowed", CHOICE_FIELDS, ids=[f"{n}.{k}" for n, k, _ in CHOICE_FIELDS])
def test_a_choice_outside_its_literal_names_the_nearest_and_the_choices(name, key, allowed):
    typo = allowed[-1] + "x"
    with pytest.raises(ValueError) as info:
        get_workload(name).build({key: typo}, num_classes=NUM_CLASSES, num_frames=4)
    assert f"workload '{name}' parameter '{key}': {typo!r} is not one of {list(allowed)}; " \
           f"did you mean {allowed[-1]!r}?" in str(info.value)


@pytest.mark.parametrize("name,key,span", RANGED_FIELDS, ids=[f"{n}.{k}" for n, k, _ in RANGED_FIELDS])
def test_a_value_outside_its_declared_range_is_refused(name, key, span):
    lo, hi = span
    spec = get_workload(name)
    assert lo is None or getattr(spec.params_cls(), key) >= lo
    assert hi is None or getattr(spec.params_cls(), key) <= hi
    outside = hi + 1 if hi is not None else lo - 1
    with pytest.raises(ValueError, match=re.escape(f"'{key}': {outside!r} is out of range; it must be")):
        spec.resolve_params({key: outside})


def test_the_declared_ranges_include_the_ones_builders_checked_by_hand():
    assert {("tsm", "fold_div"), ("afnet", "rt"), ("svmix", "mix_prob"), ("svmix", "switch_prob"),
            ("svmix", "ema_momentum")} <= {(name, key) for name, key, _ in RANGED_FIELDS}
    with pytest.raises(ValueError, match=r"'fold_div': 0 is out of range; it must be >= 1"):
        get_workload("tsm").build({"fold_div": 0}, num_classes=NUM_CLASSES, num_frames=4)


def test_a_wrapped_workloads_params_are_its_typed_params_resolved_once(monkeypatch):
    spec = get_workload("svmix")
    params = spec.resolve_params({"backbone_workload": "tsn", "method": "mixup", "backbone_params": {"backbone": "resnet18"}})
    assert params.backbone_params == get_workload("tsn").resolve_params({"backbone": "resnet18"})
    assert dataclasses.asdict(params)["backbone_params"]["backbone"] == "resnet18"  # recorded as a mapping
    with pytest.raises(ValueError, match=r"unknown parameter 'backbone_params.backbon' for workload 'tsn'; "
                                         r"did you mean 'backbone'\?"):
        spec.resolve_params({"backbone_workload": "tsn", "backbone_params": {"backbon": "resnet18"}})
    with pytest.raises(ValueError, match=r"parameter 'backbone_params.shift_place': 'blok' is not one of \['blockres', 'block'\]"):
        spec.resolve_params({"backbone_params": {"shift_place": "blok"}})

    def from_mapping(*args, **kwargs):
        raise AssertionError("resolved params were turned back into a mapping and resolved again")

    monkeypatch.setattr(registry, "from_mapping", from_mapping)
    assert spec.input_for(params).sampling == "segments"
    spec.build(params, num_classes=NUM_CLASSES, num_frames=4, weights=False)


# Shared layers: loading a local weight file (what `pretrained: PATH` does for 2D backbones).


@pytest.fixture
def imagenet_resnet18_state():
    import timm

    torch.manual_seed(1)
    return timm.create_model("resnet18", num_classes=1000).state_dict()  # with its `fc.*` classifier


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_loads_every_backbone_weight(tmp_path, imagenet_resnet18_state, suffix):
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(imagenet_resnet18_state, str(path))
    else:
        torch.save({"state_dict": imagenet_resnet18_state}, path)  # nested, as timm trainers save
    for name in ("tsn", "tsm"):
        model = get_workload(name).build(
            {"backbone": "resnet18", "pretrained": str(path)}, num_classes=NUM_CLASSES, num_frames=4
        )
        own = model.backbone.state_dict()
        key = "layer1.0.conv1.net.weight" if name == "tsm" else "layer1.0.conv1.weight"
        assert torch.equal(own[key], imagenet_resnet18_state["layer1.0.conv1.weight"])
        assert torch.equal(own["bn1.running_mean"], imagenet_resnet18_state["bn1.running_mean"])


def test_pretrained_file_with_missing_or_foreign_keys_lists_them(tmp_path, imagenet_resnet18_state):
    state = dict(imagenet_resnet18_state)
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \['layer4.1.bn2.weight'\]; unexpected \['extra.weight'\]"):
        get_workload("tsn").build({"backbone": "resnet18", "pretrained": str(path)}, num_classes=5, num_frames=4)


@pytest.mark.parametrize("name", WORKLOADS)
def test_every_weight_source_is_the_one_pretrained_string(name):
    fields = {f.name: f for f in dataclasses.fields(get_workload(name).params_cls)}
    assert not [n for n in fields if n.startswith("pretrained") and n != "pretrained"]
    if "pretrained" in fields:
        assert fields["pretrained"].type in (str, "str") and fields["pretrained"].default == ""


def test_the_former_weight_params_still_read(tmp_path):
    """Recipes and recorded models from before the one string: `pretrained: bool`, `pretrained_file`."""
    spec = get_workload("tsn")
    assert spec.resolve_params({"pretrained": True}).pretrained == "timm"
    assert spec.resolve_params({"pretrained": False}).pretrained == ""
    assert spec.resolve_params({"pretrained_file": "w.pth"}).pretrained == "w.pth"
    with pytest.raises(ValueError, match="set only pretrained"):
        spec.resolve_params({"pretrained": True, "pretrained_file": str(tmp_path / "w.pth")})


def test_weights_false_builds_the_network_without_reading_weights(tmp_path):
    spec = get_workload("svmix")
    params = {"backbone_workload": "tsn", "method": "mixup",
              "backbone_params": {"backbone": "resnet18", "pretrained": str(tmp_path / "absent.pth")}}
    with pytest.raises(FileNotFoundError):
        spec.build(params, num_classes=NUM_CLASSES, num_frames=4)
    model = spec.build(params, num_classes=NUM_CLASSES, num_frames=4, weights=False)
    assert sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(ValueError, match="no timm weights"):
        get_workload("afnet").build({"pretrained": "timm"}, num_classes=NUM_CLASSES, num_frames=4)
