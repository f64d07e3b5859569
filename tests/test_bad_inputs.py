"""A bad-input corpus built by the tests, through `actionlab train` end to end: every bad row is skipped,
counted (`data/bad_samples`) and listed by name (`data/bad_samples.tsv`); above `data.max_bad_fraction`
the run stops with a message naming files and the fix. Unit-level kinds (manifest lines, configs, tune
spaces, each decoder error) are in test_data_*.py, test_config.py and test_tune.py; this file adds the
corrupt-frame-in-the-middle video and the whole path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from actionlab.data import decode, manifest
from actionlab.data.decode import DecodeError


def corrupt_middle(good: Path, out: Path) -> Path:
    """A copy of `good` whose middle third of coded frame data (the `mdat` box) is random bytes."""
    data = bytearray(good.read_bytes())
    start = data.find(b"mdat") + 4
    lo, hi = start + (len(data) - start) // 3, start + 2 * (len(data) - start) // 3
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_corrupt_frames_in_the_middle_name_the_file(backend, index_video, tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIONLAB_DECODER", backend)
    bad = corrupt_middle(index_video(num_frames=24), tmp_path / "mid.mp4")
    with pytest.raises(DecodeError) as info:
        decode.read_frames(bad, list(range(24)))
    assert info.value.kind == "corrupt" and str(bad) in str(info.value)


def build_corpus(root: Path, synth_manifest: Path) -> tuple[Path, list[str]]:
    """Good generated videos plus one train row of each bad kind; returns (manifest, bad video names)."""
    from PIL import Image

    src = synth_manifest.parent
    shutil.copytree(src / "videos", root / "videos")
    shutil.copy(src / "classes.txt", root / "classes.txt")
    good = pd.read_parquet(synth_manifest)[["video", "label", "split"]]
    some = root / good["video"].iloc[0]
    bad_dir = root / "bad"
    bad_dir.mkdir()
    (bad_dir / "zero.mp4").write_bytes(b"")
    (bad_dir / "text.mp4").write_text("this is a text file named .mp4\n")
    (bad_dir / "trunc.mp4").write_bytes(some.read_bytes()[: some.stat().st_size // 2])
    corrupt_middle(some, bad_dir / "corrupt_mid.mp4")
    outside = root.parent / "outside.mp4"
    shutil.copy(some, outside)
    os.symlink(outside, bad_dir / "link_out.mp4")
    for name, count in (("bad_jpeg", 8), ("few_frames", 3)):
        folder = bad_dir / name
        folder.mkdir()
        for i in range(count):
            Image.fromarray(np.full((32, 32, 3), 30 * i, np.uint8)).save(folder / f"{i + 1:05d}.jpg")
    for i in (3, 4):  # every 4-segment draw over 8 frames picks one of them
        (bad_dir / "bad_jpeg" / f"{i:05d}.jpg").write_bytes(b"not a jpeg")
    bad_rows = [("bad/missing.mp4", 0, "video"), ("bad/zero.mp4", 1, "video"), ("bad/text.mp4", 2, "video"),
                ("bad/trunc.mp4", 3, "video"), ("bad/corrupt_mid.mp4", 0, "video"),
                (good["video"].iloc[1], 99, "video"), ("../outside.mp4", 1, "video"),
                ("bad/link_out.mp4", 2, "video"), ("bad/bad_jpeg", 3, "frames"), ("bad/few_frames", 0, "frames"),
                (good["video"].iloc[2], -1, "video"), ("bad/../../outside.mp4", 0, "video")]
    # 16 good + 12 bad train rows: whole batches of 4, so the loader's drop_last skips none of them.
    bad = pd.DataFrame([(v, lab, "train", media) for v, lab, media in bad_rows],
                       columns=["video", "label", "split", "media"])
    rows = pd.concat([good.assign(media="video"), bad], ignore_index=True).assign(num_frames=8)
    path = root / "manifest.parquet"
    path.write_bytes(manifest.manifest_bytes(rows))
    return path, [v for v, _, _ in bad_rows]


def test_corpus_rows_are_exactly_the_bad_ones(tmp_path, synth_dataset):
    """The corpus, read by the training dataset: each bad row is an error item naming it, the rest clips."""
    from actionlab.data.dataset import VideoClipDataset
    from workloads import InputFormat

    path, bad_names = build_corpus(tmp_path / "corpus", synth_dataset)
    df = manifest.read_manifest(path)
    fmt = InputFormat(sampling="segments", num_frames=4, size_px=32, resize_px=32)
    ds = VideoClipDataset(df=df, fmt=fmt, root=path.parent, num_classes=4, train=True)
    errors = {}
    for i in range(len(ds)):
        item = ds[i]
        if "error" in item:
            errors[item["video_id"]] = item
    assert sorted(errors) == sorted(bad_names)
    for name, item in errors.items():
        assert Path(name).name in item["error"] or name in item["error"], item
    kinds = {name: item["kind"] for name, item in errors.items()}
    assert kinds["bad/missing.mp4"] == "missing" and kinds["bad/zero.mp4"] == "empty"
    assert kinds["bad/text.mp4"] == kinds["bad/corrupt_mid.mp4"] == "corrupt"
    assert kinds["../outside.mp4"] == kinds["bad/link_out.mp4"] == "outside_root"
    assert "not a readable image" in errors["bad/bad_jpeg"]["error"]
    assert kinds["bad/few_frames"] in ("missing", "short")
    assert sum(k == "label" for k in kinds.values()) == 2


FAST = ["--set", "clip.num_frames=4", "--set", "clip.size_px=32", "--set", "clip.resize_px=32",
        "--set", "data.batch_size=4", "--set", "data.num_loader_workers=0", "--set", "schedule.epochs=1"]


@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get("ACTIONLAB_TEST_NETNS"),
                    reason="starts Ray: run through scripts/test.sh (private network namespace)")
def test_training_skips_counts_and_lists_bad_samples(tmp_path, synth_dataset, ray_address):
    import mlflow

    data_manifest, bad_names = build_corpus(tmp_path / "corpus", synth_dataset)
    env = dict(os.environ, ACTIONLAB_HOME=str(tmp_path / "home"), RAY_ADDRESS=ray_address, RAY_AUTH_MODE="disabled",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)

    def train(*extra: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "actionlab", "train", "smoke", "--set", f"data.manifest={data_manifest}", *FAST,
                *extra, "--json"]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)

    ok = train("--set", "data.max_bad_fraction=0.5", "--set", "tracking.run_name=tolerant")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-5000:]
    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    c = mlflow.MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("actionlab-smoke")
    (run,) = c.search_runs([exp.experiment_id], filter_string="tags.`actionlab.run_name` = 'tolerant'")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["data/bad_samples"] == len(bad_names)
    listed = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/data/bad_samples.tsv")
    lines = listed.strip().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted(bad_names)
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)
    assert "outside [0, 4)" in listed and "escapes the data root" in listed and "empty (0 bytes)" in listed
    named = [line.split("bad sample ", 1)[1] for line in ok.stdout.splitlines() if "bad sample " in line]
    for name in bad_names:  # each named once on the console, with its reason, as it was met
        assert sum(line.startswith(f"{name}: ") for line in named) == 1, (name, named)
    assert f"bad samples after epoch 1: {len(bad_names)} distinct (" in ok.stdout, ok.stdout[-3000:]

    strict = train("--set", "data.max_bad_fraction=0.1", "--set", "tracking.run_name=strict",
                   "--set", "compute.max_failures=0")
    assert strict.returncode != 0
    output = strict.stdout + strict.stderr
    assert "above data.max_bad_fraction=0.1" in output and "actionlab data check" in output, output[-5000:]
    assert any(name in output for name in bad_names)
    (failed,) = c.search_runs([exp.experiment_id], filter_string="tags.`actionlab.run_name` = 'strict'")
    assert failed.info.status == "FAILED" and "max_bad_fraction" in failed.data.tags["actionlab.error"]

    # Rerun under the same name with a tolerance that admits the bad rows: the FAILED run is resumed and
    # finishes, and its error tag (the earlier attempt's) goes.
    rerun = train("--set", "data.max_bad_fraction=0.5", "--set", "tracking.run_name=strict")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    assert "resuming interrupted run 'strict'" in rerun.stdout
    resumed = c.get_run(failed.info.run_id)
    assert resumed.info.status == "FINISHED" and "actionlab.error" not in resumed.data.tags, resumed.data.tags

    # More workers than the cluster has CPUs: refused before any MLflow run exists.
    big = train("--set", "compute.num_workers=64", "--set", "tracking.run_name=too-big")
    assert big.returncode == 2, big.stdout[-3000:] + big.stderr[-3000:]
    assert "compute.num_workers=64 x compute.cpus_per_worker=" in big.stderr and "CPUs but the Ray cluster has" \
        in big.stderr, big.stderr[-3000:]
    assert not c.search_runs([exp.experiment_id], filter_string="tags.`actionlab.run_name` = 'too-big'")
