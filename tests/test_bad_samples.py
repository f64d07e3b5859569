"""Bad samples named on the console as met: each once, path and reason, rank 0 only, and a per-cause
summary per epoch whose causes match the dataset's own kinds on the bad-input corpus."""

from __future__ import annotations

import pytest

from actionlab.data import manifest
from actionlab.train.bad_samples import BadSampleLog, cause

from test_bad_inputs import build_corpus


def test_cause_matches_the_dataset_kind_for_every_bad_row(tmp_path, synth_dataset):
    from actionlab.data.dataset import VideoClipDataset
    from workloads import InputFormat

    path, bad_names = build_corpus(tmp_path / "corpus", synth_dataset)
    fmt = InputFormat(sampling="segments", num_frames=4, size_px=32, resize_px=32)
    ds = VideoClipDataset(df=manifest.read_manifest(path), fmt=fmt, root=path.parent, num_classes=4, train=True)
    items = [item for item in (ds[i] for i in range(len(ds))) if "error" in item]
    assert sorted(item["video_id"] for item in items) == sorted(bad_names)
    assert {item["kind"] for item in items} >= {"missing", "empty", "corrupt", "outside_root", "label"}
    for item in items:
        assert cause(item["error"]) == item["kind"], item


def test_each_bad_sample_named_once_then_summarised(capsys):
    log = BadSampleLog(0, already=[("old.mp4", "old.mp4: file does not exist; fix the manifest path")])
    outside = ("../../etc/passwd", "../../etc/passwd: path escapes the data root /data (resolves to /etc/passwd)")
    missing = ("a.mp4", "/data/a.mp4: file does not exist; fix the manifest path or the data root")
    log.met([outside, missing])
    log.met([outside])  # met again: not named again
    assert capsys.readouterr().out.splitlines() == [
        "bad sample ../../etc/passwd: path escapes the data root /data (resolves to /etc/passwd)",
        "bad sample a.mp4: /data/a.mp4: file does not exist; fix the manifest path or the data root",
    ]
    other_rank = ("b.mp4", "b.mp4: label 9 is outside [0, 4); fix the manifest or the class list")
    log.end_epoch(2, [outside, missing, other_rank, ("old.mp4", "old.mp4: file does not exist")], encounters=5)
    assert capsys.readouterr().out.splitlines() == [
        "bad sample b.mp4: label 9 is outside [0, 4); fix the manifest or the class list",
        "bad samples after epoch 2: 4 distinct (missing 2, label 1, outside_root 1); 5 skipped this epoch; "
        "full list in MLflow data/bad_samples.tsv",
    ]


@pytest.mark.parametrize("rank", [1, 3])
def test_only_rank_zero_prints(rank, capsys):
    log = BadSampleLog(rank)
    log.met([("x.mp4", "x.mp4: file is empty (0 bytes); re-download or re-encode it")])
    log.end_epoch(1, [("x.mp4", "x.mp4: file is empty (0 bytes)")], encounters=1)
    assert capsys.readouterr().out == ""
