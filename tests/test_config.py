"""Config resolution: defaults < recipe < --set, and errors that name the fix."""

import dataclasses
import typing

import pytest

import workloads
from workloads import get_workload, registry
from actionlab.config import (ConfigError, Config, DataConfig, EvalConfig, WorkloadConfig, dump_yaml, flat_params, from_dict, load_recipe, parse_override,
                              resolve, shipped_recipes, to_dict)


def test_defaults_recipe_then_overrides():
    cfg = resolve({"optim": {"lr": 0.1}, "clip": {"num_frames": 16}}, ["optim.lr=0.02", "workload.params.fold_div=4"])
    assert cfg.optim.lr == 0.02
    assert cfg.clip.num_frames == 16
    assert cfg.workload.params == get_workload("tsm").params_cls(fold_div=4)  # every value, resolved once
    assert cfg.schedule.epochs == Config().schedule.epochs


def test_roundtrip_through_dict_and_yaml():
    cfg = resolve({}, ["clip.scales=[1.0, 0.5]", "schedule.lr_steps=[3, 6]", "compute.use_gpu=false"])
    again = from_dict(to_dict(cfg))
    assert again == cfg
    assert isinstance(again.clip.scales, tuple)
    import yaml

    assert from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


def test_unknown_key_names_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'lr'"):
        resolve({}, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'schedul'; did you mean 'schedule'"):
        resolve({"schedul": {"epochs": 3}})


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"schedule.epochs: expected int, got 'many'"):
        resolve({}, ["schedule.epochs=many"])
    with pytest.raises(ConfigError, match=r"compute.amp: expected bool"):
        resolve({}, ["compute.amp=3"])
    with pytest.raises(ConfigError, match=r"expected a mapping"):
        resolve({"optim": 3})


def test_int_widens_to_float_and_choices_are_checked():
    assert resolve({}, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"data.flip: 'sideways' is not one of"):
        resolve({}, ["data.flip=sideways"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        parse_override("optim.lr")
    assert parse_override("a.b=") == {"a": {"b": ""}}


def test_flat_params_are_dotted_strings():
    flat = flat_params(resolve({}, ["workload.params.backbone=resnet18"]))
    assert flat["workload.params.backbone"] == "resnet18"
    assert flat["optim.lr"] == "0.01"
    assert all(isinstance(v, str) for v in flat.values())


def test_switching_workload_drops_the_recipes_params():
    recipe = {"workload": {"name": "tsm", "params": {"backbone": "resnet18", "fold_div": 4}}}
    tam, tsm = get_workload("tam").params_cls, get_workload("tsm").params_cls
    assert resolve(recipe, ["workload.name=tam"]).workload.params == tam()
    switched = resolve(recipe, ["workload.name=tam", "workload.params.depth=18"])
    assert switched.workload.params == tam(depth=18)
    # params given on the command line are kept whatever their order; only the recipe's are dropped
    assert resolve(recipe, ["workload.params.depth=18", "workload.name=tam"]).workload.params == tam(depth=18)
    kept = resolve(recipe, ["workload.name=tsm", "workload.params.fold_div=8"])
    assert kept.workload.params == tsm(backbone="resnet18", fold_div=8)


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_resolves_and_builds(name):
    from actionlab.config import load_recipe
    from actionlab.train.launch import check_buildable

    cfg = resolve(load_recipe(name), [])
    check_buildable(workloads.get_workload(cfg.workload.name), cfg)


def test_params_are_the_resolved_dataclass_and_round_trip_by_name():
    cfg = resolve(load_recipe("tsm_r50_sthv2"), [])
    assert cfg.workload.params == get_workload("tsm").params_cls(backbone="resnet50.tv_in1k", pretrained="timm",
                                                                 dropout=0.5, fold_div=8)
    as_dict = to_dict(cfg)["workload"]["params"]
    assert as_dict["shift_place"] == "blockres" and as_dict["temporal_pool"] is False  # defaults, by name
    assert from_dict(to_dict(cfg)) == cfg
    flat = flat_params(cfg)
    assert flat["workload.params.shift_place"] == "blockres" and flat["workload.params.temporal_pool"] == "False"
    assert "shift_place: blockres" in dump_yaml(cfg)


def test_a_changed_default_does_not_change_a_dumped_config(monkeypatch):
    import yaml

    cfg = resolve({}, ["workload.params.backbone=resnet18"])
    text = dump_yaml(cfg)
    tsm = get_workload("tsm")
    changed = dataclasses.make_dataclass("TSMParams", [("shift_place", str, "block")], bases=(tsm.params_cls,),
                                         frozen=True)

    monkeypatch.setitem(registry._REGISTRY, "tsm", dataclasses.replace(tsm, params_cls=changed))
    assert resolve({}, ["workload.params.backbone=resnet18"]).workload.params.shift_place == "block"
    assert from_dict(yaml.safe_load(text)).workload.params.shift_place == "blockres"


def test_unknown_params_and_workloads_name_the_nearest():
    with pytest.raises(ConfigError, match=r"workload.params: unknown parameter 'fold_dv' for workload 'tsm'; "
                                          r"did you mean 'fold_div'"):
        resolve({}, ["workload.params.fold_dv=4"])
    with pytest.raises(ConfigError, match=r"workload.name: unknown workload 'tsmm'; did you mean 'tsm'"):
        resolve({}, ["workload.name=tsmm"])


def test_choices_are_literals_with_the_choices_in_the_error():
    with pytest.raises(ConfigError, match=r"optim.name: 'adam' is not one of \['sgd', 'adamw'\]; did you mean 'adamw'"):
        resolve({}, ["optim.name=adam"])
    with pytest.raises(ConfigError, match=r"schedule.lr_schedule: 'linear' is not one of"):
        resolve({"schedule": {"lr_schedule": "linear"}})
    assert resolve({}, ["data.flip=off"]).data.flip == "off"  # YAML reads a bare off as False


def test_config_and_workload_params_share_one_validator():
    """A choice, a range and a nested key of the workload's params fail as the config's own keys do."""
    with pytest.raises(ConfigError, match=r"workload.params: workload 'tsm' parameter 'shift_place': 'blok' is not one "
                                          r"of \['blockres', 'block'\]; did you mean 'block'\?"):
        resolve({}, ["workload.params.shift_place=blok"])
    with pytest.raises(ConfigError, match=r"'fold_div': 0 is out of range; it must be >= 1"):
        resolve({}, ["workload.params.fold_div=0"])
    with pytest.raises(ConfigError, match=r"data.decoder: 'pyv' is not one of \['auto', 'decord', 'pyav'\]; "
                                          r"did you mean 'pyav'\?"):
        resolve({}, ["data.decoder=pyv"])
    with pytest.raises(ConfigError, match=r"unknown config key 'data.decodr'; did you mean 'decoder'\?"):
        resolve({}, ["data.decodr=pyav"])


def test_choice_lists_are_read_from_their_homes():
    from actionlab.data import decode, frame_folders, transforms
    from actionlab.train import evaluate
    from workloads.params import choices

    data, ev = typing.get_type_hints(DataConfig), typing.get_type_hints(EvalConfig)
    assert choices(data["decoder"]) == ("auto", *decode.DECODERS)
    assert choices(data["pixels"]) == ("auto", *decode.PIXELS)
    assert choices(data["jpeg_decoder"]) == frame_folders.JPEG_DECODERS
    assert choices(data["flip"]) == transforms.FLIP_POLICIES
    assert choices(ev["fusion"]) == evaluate.FUSIONS


def test_a_config_resolves_its_workload_params_once(params_built):
    """No throw-away default `Config()` (whose tsm params would be resolved too), no dict round trip."""
    cfg = resolve({"workload": {"name": "tsn"}}, ["workload.params.backbone=resnet18"])
    assert params_built == ["TSNParams"]
    params_built.clear()
    again = WorkloadConfig(name="tsn", params=cfg.workload.params)  # a ready instance is checked, not rebuilt
    assert again.params is cfg.workload.params and params_built == []


def test_updates_merge_dotted_values_after_the_overrides():
    cfg = resolve({}, ["optim.lr=0.5"], updates={"optim.lr": 0.02, "clip.scales": [1.0, 0.5], "workload.params.fold_div": 4})
    assert cfg.optim.lr == 0.02 and cfg.clip.scales == (1.0, 0.5) and cfg.workload.params.fold_div == 4


def test_switching_a_wrapped_backbone_drops_its_stale_params():
    recipe = load_recipe("svmix_smoke")  # backbone_workload: tsm, backbone_params: {backbone: resnet18}
    assert resolve(recipe, []).workload.params.backbone_params.backbone == "resnet18"
    # tsn has a `backbone` too: the recipe's resnet18 (meant for tsm) must not silently carry over
    tsn = resolve(recipe, ["workload.params.backbone_workload=tsn"]).workload.params
    assert tsn.backbone_params == get_workload("tsn").resolve_params()
    r21d = resolve(recipe, ["workload.params.backbone_params.depth=18", "workload.params.backbone_workload=r2plus1d"])
    assert r21d.workload.params.backbone_params.depth == 18
    same = resolve(recipe, ["workload.params.backbone_workload=tsm"]).workload.params
    assert same.backbone_params.backbone == "resnet18"  # not a switch: kept
    with pytest.raises(ConfigError, match=r"unknown parameter 'backbone_params.depht' for workload 'r2plus1d'; "
                                          r"did you mean 'depth'"):
        resolve(recipe, ["workload.params.backbone_workload=r2plus1d", "workload.params.backbone_params.depht=18"])
