"""Config resolution: defaults < recipe < --set, and errors that name the fix."""


import pytest

import workloads
from actionlab.config import (ConfigError, Config, dump_yaml, flat_params, from_dict, parse_override, resolve,
                              shipped_recipes, to_dict)


def test_defaults_recipe_then_overrides():
    cfg = resolve({"optim": {"lr": 0.1}, "clip": {"num_frames": 16}}, ["optim.lr=0.02", "workload.params.fold_div=4"])
    assert cfg.optim.lr == 0.02
    assert cfg.clip.num_frames == 16
    assert cfg.workload.params == {"fold_div": 4}
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
    assert resolve(recipe, ["workload.name=tam"]).workload.params == {}
    switched = resolve(recipe, ["workload.name=tam", "workload.params.depth=18"])
    assert switched.workload.params == {"depth": 18}
    kept = resolve(recipe, ["workload.name=tsm", "workload.params.fold_div=8"])
    assert kept.workload.params == {"backbone": "resnet18", "fold_div": 8}


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_resolves_and_builds(name):
    from actionlab.config import load_recipe
    from actionlab.train.launch import check_buildable

    cfg = resolve(load_recipe(name), [])
    check_buildable(workloads.get_workload(cfg.workload.name), cfg)
