"""A saved model records every params value and is rebuilt from the record, not from today's defaults."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from actionlab.config import load_recipe
from actionlab.config import flat_params, resolve
from actionlab.models import folder
from actionlab.models.meta import ModelMetaError
from actionlab.train.loop import model_meta
from workloads import get_workload, registry

CLASSES = ("a", "b", "c")


def _tsm_sthv2():
    """The tsm_r50_sthv2 recipe, CPU-sized (ResNet-18, no download), 4 frames."""
    return resolve(load_recipe("tsm_r50_sthv2"), ["workload.params.backbone=resnet18", "workload.params.pretrained=",
                                                  "clip.num_frames=4", "clip.size_px=32", "clip.resize_px=36"])


def _save(tmp_path, cfg):
    spec = get_workload(cfg.workload.name)
    torch.manual_seed(0)
    model = spec.build(cfg.workload.params, num_classes=len(CLASSES), num_frames=cfg.clip.num_frames).eval()
    out = folder.save_model_dir(tmp_path / "model", model, model_meta(cfg, spec, CLASSES))
    return model, out


def _logits(model):
    torch.manual_seed(1)
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        return model(clips)


def _change_tsm_defaults(monkeypatch, **defaults):
    """Another day's code: the TSM defaults differ (the registry entry gets a Params with new defaults)."""
    spec = get_workload("tsm")
    fields = [(name, type(value), dataclasses.field(default=value)) for name, value in defaults.items()]
    changed = dataclasses.make_dataclass("TSMParams", fields, bases=(spec.params_cls,), frozen=True)
    monkeypatch.setitem(registry._REGISTRY, "tsm", dataclasses.replace(spec, params_cls=changed))


def test_meta_json_and_mlflow_params_record_defaults_too(tmp_path):
    cfg = _tsm_sthv2()
    _, out = _save(tmp_path, cfg)
    recorded = json.loads((out / folder.META_FILE).read_text())
    assert recorded["params"] == dataclasses.asdict(get_workload("tsm").params_cls(
        backbone="resnet18", pretrained="", dropout=0.5, fold_div=8))
    assert recorded["params"]["shift_place"] == "blockres" and recorded["params"]["temporal_pool"] is False
    flat = flat_params(cfg)
    assert flat["workload.params.shift_place"] == "blockres" and flat["workload.params.temporal_pool"] == "False"


@pytest.mark.parametrize("changed", [{"shift_place": "block"}, {"temporal_pool": True}], ids=lambda c: next(iter(c)))
def test_a_changed_default_does_not_change_the_saved_model(tmp_path, monkeypatch, changed):
    cfg = _tsm_sthv2()
    model, out = _save(tmp_path, cfg)
    _change_tsm_defaults(monkeypatch, **changed)
    loaded = folder.load_model(str(out))
    assert (loaded.meta.params.shift_place, loaded.meta.params.temporal_pool) == ("blockres", False)
    assert torch.equal(_logits(loaded.model), _logits(model))
    # what rebuilding from today's defaults gives: another network (other weight names, or other logits)
    today = get_workload("tsm").build({"backbone": "resnet18"}, num_classes=3, num_frames=4).eval()
    same_names = today.state_dict().keys() == model.state_dict().keys()
    if same_names:
        today.load_state_dict(model.state_dict())
    assert not same_names or not torch.allclose(_logits(today), _logits(model))


def test_an_old_checkpoint_with_only_overrides_loads_with_todays_defaults(tmp_path, caplog):
    cfg = _tsm_sthv2()
    model, out = _save(tmp_path, cfg)
    meta_file = out / folder.META_FILE
    old = json.loads(meta_file.read_text())
    old["params"] = {"backbone": "resnet18", "fold_div": 8}  # what meta.json held before every value was recorded
    del old["actionlab_version"]
    meta_file.write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="actionlab.models.meta"):
        loaded = folder.load_model(str(out))
    assert torch.equal(_logits(loaded.model), _logits(model))
    assert "records no value for tsm params" in caplog.text and "'shift_place'" in caplog.text
    assert "today's defaults" in caplog.text


def test_a_recorded_key_this_code_lacks_is_refused_clearly(tmp_path):
    _, out = _save(tmp_path, _tsm_sthv2())
    meta_file = out / folder.META_FILE
    values = json.loads(meta_file.read_text())
    values["params"]["shift_mode"] = "bidirectional"  # a key a later (or earlier) version had
    meta_file.write_text(json.dumps(values))
    with pytest.raises(ModelMetaError) as info:
        folder.load_model(str(out))
    text = str(info.value)
    assert "unknown parameter 'shift_mode' for workload 'tsm'" in text
    assert str(meta_file) in text and "load it with that version" in text and "actionlab 0." in text


def test_a_recorded_value_outside_its_choices_is_a_clear_error(tmp_path):
    _, out = _save(tmp_path, _tsm_sthv2())
    meta_file = out / folder.META_FILE
    values = json.loads(meta_file.read_text())
    values["params"]["shift_place"] = "everywhere"
    meta_file.write_text(json.dumps(values))
    with pytest.raises(ModelMetaError, match=r"cannot rebuild the recorded workload 'tsm': .*'shift_place': "
                                             r"'everywhere' is not one of \['blockres', 'block'\]"):
        folder.load_model(str(out))


def test_a_wrapped_backbone_records_every_value_of_the_whole_network(tmp_path):
    cfg = resolve(load_recipe("svmix_smoke"), ["clip.num_frames=4", "clip.size_px=32"])
    _, out = _save(tmp_path, cfg)
    recorded = json.loads((out / folder.META_FILE).read_text())["params"]
    assert recorded["backbone_workload"] == "tsm"
    assert recorded["backbone_params"] == dataclasses.asdict(get_workload("tsm").resolve_params({"backbone": "resnet18"}))


def test_loading_a_model_resolves_the_recorded_params_once(tmp_path, params_built):
    cfg = resolve(load_recipe("svmix_smoke"), ["clip.num_frames=4", "clip.size_px=32"])
    model, out = _save(tmp_path, cfg)
    params_built.clear()
    loaded = folder.load_model(str(out))
    assert params_built == ["SVMixParams", "TSMParams"]  # the record, and inside it the wrapped backbone's: once each
    assert loaded.meta.params == cfg.workload.params
    assert torch.equal(_logits(loaded.model.eval()), _logits(model))


def test_a_warm_start_reads_the_record_and_names_changed_params(tmp_path):
    from actionlab.train.loop import load_init_weights

    _, out = _save(tmp_path, _tsm_sthv2())
    cfg = resolve({}, ["workload.params.backbone=resnet18", "workload.params.fold_div=4"])
    model = get_workload("tsm").build(cfg.workload.params, num_classes=5, num_frames=4)
    report = load_init_weights(model, str(out), cfg.workload.params)
    assert "newly initialised 2 ['fc.bias', 'fc.weight']" in report  # 5 classes, not the checkpoint's 3
    assert "params differ from the checkpoint's: {'fold_div': '8 -> 4'}" in report
    values = json.loads((out / folder.META_FILE).read_text())
    values["params"]["shift_mode"] = "bidirectional"
    (out / folder.META_FILE).write_text(json.dumps(values))
    with pytest.raises(ModelMetaError, match="unknown parameter 'shift_mode' for workload 'tsm'"):
        load_init_weights(model, str(out), cfg.workload.params)


def test_a_meta_json_from_before_snippet_sampling_reads_as_the_input_format_and_writes_back_the_same(tmp_path):
    """The input format's keys stay flat in meta.json: a record written before `snippet_frames` (and the
    version) were recorded loads, and is written again with the same values under the same keys."""
    cfg = _tsm_sthv2()
    model, out = _save(tmp_path, cfg)
    meta_file = out / folder.META_FILE
    written = json.loads(meta_file.read_text())
    old = {"workload": "tsm", "params": written["params"], "classes": list(CLASSES), "sampling": "segments",
           "num_frames": 4, "stride": 1, "size_px": 32, "resize_px": 36, "mean": [0.485, 0.456, 0.406],
           "std": [0.229, 0.224, 0.225]}
    meta_file.write_text(json.dumps(old))
    loaded = folder.load_model(str(out))
    fmt = loaded.meta.preprocessing
    assert fmt == registry.InputFormat(sampling="segments", num_frames=4, stride=1, size_px=32, resize_px=36)
    assert fmt == model_meta(cfg, get_workload("tsm"), CLASSES).preprocessing  # what training records today
    assert fmt.clip_frames == 4
    again = loaded.meta.to_json()
    assert {k: again[k] for k in old} == old and again["snippet_frames"] == 1
    assert torch.equal(_logits(loaded.model), _logits(model))


def test_a_recorded_input_format_that_does_not_hold_is_refused_with_the_file(tmp_path):
    _, out = _save(tmp_path, _tsm_sthv2())
    meta_file = out / folder.META_FILE
    recorded = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**recorded, "sampling": "dense"}))
    with pytest.raises(ModelMetaError, match=r"meta.json: the recorded input format does not hold: sampling: 'dense' is not one of"):
        folder.load_model(str(out))
