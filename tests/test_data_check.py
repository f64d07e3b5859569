"""Pre-flight data check over real files."""

import csv
import os

import pandas as pd

from actionlab.data import manifest
from actionlab.data.check import check_manifest


def test_clean_dataset_passes(synth_dataset):
    report = check_manifest(synth_dataset)
    assert report.num_rows == 24 and report.num_bad == 0 and report.num_classes == 4
    assert "no problems found" in report.summary()


def test_bad_rows_are_listed_with_fixes(tmp_path, index_video):
    root = tmp_path / "data"
    good = index_video("data/ok.mp4", num_frames=10)
    (root / "zero.mp4").write_bytes(b"")
    (root / "trunc.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "classes.txt").write_text("a\nb\n")
    df = pd.DataFrame(
        {"video": ["ok.mp4", "zero.mp4", "trunc.mp4", "gone.mp4", "../x.mp4", "ok.mp4"], "label": [0, 1, 0, 1, 0, 2]}
    )
    (root / "m.parquet").write_bytes(manifest.manifest_bytes(df))
    report = check_manifest(root / "m.parquet", out_bad_list=tmp_path / "bad.csv")
    assert report.num_ok == 1 and report.num_bad == 5
    kinds = {row.video: row.kind for row in report.bad}
    assert kinds["zero.mp4"] == "empty" and kinds["gone.mp4"] == "missing" and kinds["../x.mp4"] == "outside_root"
    assert kinds["trunc.mp4"] in ("corrupt", "short")
    assert report.bad[-1].kind == "label"
    text = report.summary()
    assert "5 bad" in text and "re-download" in text and "re-encode" in text and "data.root" in text
    with open(tmp_path / "bad.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["video"] for r in rows] == ["zero.mp4", "trunc.mp4", "gone.mp4", "../x.mp4", "ok.mp4"]
    assert os.fspath(tmp_path / "bad.csv") in text


def test_frame_folder_rows(tmp_path):
    from PIL import Image
    import numpy as np

    root = tmp_path
    folder = root / "frames" / "v1"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{i + 1:05d}.jpg")
    df = pd.DataFrame({"video": ["frames/v1", "frames/v1", "frames/v2"], "label": [0, 0, 0], "num_frames": [5, 9, 5], "media": ["frames"] * 3})
    (root / "m.parquet").write_bytes(manifest.manifest_bytes(df))
    report = check_manifest(root / "m.parquet", num_classes=1)
    assert [row.kind for row in report.bad] == ["short", "missing"]
