"""`actionlab eval` with several models: each samples with its own recorded frames, the ensemble averages
their per-video scores (H2CN's "(8+16)" rows). Two tiny random models on the generated dataset: a TSM
over 4 evenly spaced frames and an H2CN over 2 segments x 5-frame snippets."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from actionlab import cli, tracking
from actionlab.config import resolve
from actionlab.data import manifest as data_manifest
from actionlab.data.dataset import build_dataset
from actionlab.models import folder
from actionlab.train import launch, loop
from actionlab.train.evaluate import evaluate_models, normalise, stats_tensors
from workloads import get_workload

SIZE = ["clip.size_px=32", "clip.resize_px=32"]


@pytest.fixture(scope="module")
def models(synth_dataset, tmp_path_factory):
    """Checkpoint dirs written as training writes them (`loop.model_meta`): tsm 4 frames, h2cn 2 segments."""
    out = tmp_path_factory.mktemp("models")
    dirs = []
    for name, frames in (("tsm", 4), ("h2cn", 2)):
        spec = get_workload(name)
        cfg = resolve({"workload": {"name": name, "params": dict(spec.tiny)}},
                      [f"data.manifest={synth_dataset}", f"clip.num_frames={frames}", *SIZE])
        classes = launch.resolve_data(cfg).classes
        torch.manual_seed(len(dirs))
        model = spec.build(cfg.workload.params, num_classes=len(classes), num_frames=frames)
        dirs.append(str(folder.save_model_dir(out / name, model, loop.model_meta(cfg, spec, classes))))
    return dirs


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIONLAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def _scores(model_dir: str, manifest, *, fusion: str) -> dict:
    """{video: (fused scores (K,), label)} computed item by item, outside `evaluate_models`."""
    loaded = folder.load_model(model_dir)
    meta = loaded.meta
    df = data_manifest.select_split(data_manifest.read_manifest(manifest), "val")
    dataset = build_dataset(df, meta.preprocessing, train=False, root=str(manifest.parent), classes=meta.classes,
                            num_clips=2)
    mean, std = stats_tensors(meta.preprocessing.mean, meta.preprocessing.std, "cpu")
    out = {}
    for i in range(len(dataset)):
        item = dataset[i]
        with torch.no_grad():
            logits = loaded.model(normalise(item["clip"], mean, std))  # (V, K)
        scores = F.softmax(logits, -1).mean(0) if fusion == "probs" else logits.mean(0)
        out[item["video_id"]] = (scores, item["label"])
    return out


def _top1(scores: dict) -> float:
    return sum(int(s.argmax()) == label for s, label in scores.values()) / len(scores)


@pytest.mark.parametrize("fusion", ["probs"])  # logits: the default, in the tests below
def test_each_model_and_the_ensemble_are_scored(models, synth_dataset, home, fusion):
    tsm_meta = json.loads((Path(models[0]) / folder.META_FILE).read_text())
    h2cn_meta = json.loads((Path(models[1]) / folder.META_FILE).read_text())
    assert (tsm_meta["sampling"], tsm_meta.get("snippet_frames")) == ("segments", 1)
    assert (h2cn_meta["sampling"], h2cn_meta["snippet_frames"], h2cn_meta["num_frames"]) == ("snippets", 5, 2)

    summary = evaluate_models(models, str(synth_dataset), num_clips=2, fusion=fusion, num_loader_workers=0)
    per_model = [_scores(m, synth_dataset, fusion=fusion) for m in models]
    assert len(per_model[0]) == summary["num_videos"] == 8 and summary["bad_samples"] == 0
    for i, (member, expected) in enumerate(zip(summary["members"], per_model), 1):
        assert member[f"test/member{i}/top1_2x1"] == pytest.approx(_top1(expected))
    ensemble = {v: ((per_model[0][v][0] + per_model[1][v][0]) / 2, label) for v, (_, label) in per_model[0].items()}
    assert summary["test/ensemble/top1_2x1"] == pytest.approx(_top1(ensemble))
    assert [m["num_frames"] for m in summary["members"]] == [4, 2]
    classes = (synth_dataset.parent / "classes.txt").read_text().split()
    hits = {k: [int(s.argmax()) == label for s, label in ensemble.values() if label == k] for k in range(len(classes))}
    expected = {name: sum(hits[k]) / len(hits[k]) for k, name in enumerate(classes) if hits[k]}
    assert {k: v for k, v in summary["per_class"].items() if v == v} == pytest.approx(expected)  # v == v: not NaN


def test_one_model_keeps_the_single_model_summary_and_a_twin_ensemble_agrees(models, synth_dataset, home):
    single = evaluate_models(models[1:], str(synth_dataset), num_loader_workers=0)
    assert single["model"] == models[1] and "members" not in single
    twins = evaluate_models([models[1], models[1]], str(synth_dataset), num_loader_workers=0)
    assert twins["test/ensemble/top1_1x1"] == single["test/top1_1x1"] == twins["members"][0]["test/member1/top1_1x1"]
    assert twins["per_class"] == single["per_class"]


def test_the_cli_prints_and_logs_every_member_and_the_ensemble(models, synth_dataset, home, capsys):
    run_id = tracking.start_run("eval-test", "ensemble")
    assert cli.main(["eval", "--model", models[0], "--model", models[1], "--data", str(synth_dataset),
                     "--run", run_id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{models[0]} (4 x segments) on 8 videos: top-1 ")
    assert lines[1].startswith(f"{models[1]} (2 x snippets) on 8 videos: top-1 ")
    assert lines[2].startswith("ensemble on 8 videos (1 clips x 1 crops, logits averaged over views, then over 2 models)")
    run = tracking.client().get_run(run_id)
    assert {"test/ensemble/top1_1x1", "test/member1/top1_1x1", "test/member2/top5_1x1"} <= set(run.data.metrics)
    artifacts = {a.path for a in tracking.client().list_artifacts(run_id, "test")}
    assert {"test/confusion_ensemble_1x1.png", "test/summary_ensemble_1x1.json"} <= artifacts


def test_models_of_other_classes_or_repeated_videos_are_refused(models, synth_dataset, home, tmp_path):
    other = tmp_path / "other"
    meta = json.loads((Path(models[0]) / folder.META_FILE).read_text())
    meta["classes"] = [f"c{i}" for i in range(len(meta["classes"]))]
    other.mkdir()
    (other / folder.META_FILE).write_text(json.dumps(meta))
    (other / folder.MODEL_FILE).write_bytes((Path(models[0]) / folder.MODEL_FILE).read_bytes())
    with pytest.raises(ValueError, match="other classes"):
        evaluate_models([models[0], str(other)], str(synth_dataset), num_loader_workers=0)
    df = pd.read_parquet(synth_dataset)
    doubled = tmp_path / "doubled.parquet"
    pd.concat([df, df[df["split"] == "val"].head(1)]).to_parquet(doubled)
    with pytest.raises(ValueError, match="more than once"):
        evaluate_models(models, str(doubled), num_loader_workers=0)
