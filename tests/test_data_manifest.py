"""Manifests: Parquet validation and conversion of IBM, TSN and mmaction2 annotation lists."""

import pandas as pd
import pytest

from actionlab.data import manifest
from actionlab.data.manifest import ManifestError, index_annotations, read_manifest, select_split


@pytest.fixture
def classes(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("open\nclose\n\npush\n")
    return path


def test_read_classes_skips_blank_lines(classes):
    assert manifest.read_classes(classes) == ["open", "close", "push"]


def test_read_classes_errors(tmp_path):
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ManifestError, match="'a' twice"):
        manifest.read_classes(tmp_path / "dup.txt")
    with pytest.raises(ManifestError, match="does not exist"):
        manifest.read_classes(tmp_path / "nope.txt")


def test_read_manifest_names_missing_column(tmp_path):
    path = tmp_path / "m.parquet"
    pd.DataFrame({"video": ["a.mp4"], "lbl": [0]}).to_parquet(path)
    with pytest.raises(ManifestError, match=r"m\.parquet has no column 'label'"):
        read_manifest(path)


def test_read_manifest_rejects_non_integer_labels_and_non_parquet(tmp_path):
    path = tmp_path / "m.parquet"
    pd.DataFrame({"video": ["a.mp4"], "label": ["zero"]}).to_parquet(path)
    with pytest.raises(ManifestError, match="'label' must hold integers"):
        read_manifest(path)
    (tmp_path / "x.parquet").write_text("video,label\n")
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        read_manifest(tmp_path / "x.parquet")
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "missing.parquet")


def test_defaults_and_select_split(tmp_path):
    uri = str(tmp_path / "d" / "m.parquet")
    assert manifest.default_root(uri) == str(tmp_path / "d")
    assert manifest.default_classes(uri) == str(tmp_path / "d" / "classes.txt")
    assert manifest.default_classes("s3://bkt/data/m.parquet") == "s3://bkt/data/classes.txt"
    df = pd.DataFrame({"video": ["a", "b", "c"], "label": [0, 1, 0], "split": ["train", "val", "train"]})
    assert select_split(df, "train")["video"].tolist() == ["a", "c"]
    assert select_split(df.drop(columns="split"), "val")["video"].tolist() == ["a", "b", "c"]


def test_index_ibm_semicolon_space_and_test_lines(tmp_path, classes):
    ann = tmp_path / "train.txt"
    ann.write_text(
        "images/open door (1);1;30;0\n"  # ';' separated, path with spaces and parentheses
        "images/b 5 20 2\n"  # space separated
        "images/c 1 10\n"  # test line: no label
    )
    report = index_annotations(ann, fmt="ibm", root=tmp_path, classes_uri=classes, out_uri=tmp_path / "m.parquet")
    df = read_manifest(tmp_path / "m.parquet")
    assert df["video"].tolist() == ["images/open door (1)", "images/b", "images/c"]
    assert df["label"].tolist() == [0, 2, -1]
    assert df["start"].tolist() == [0, 4, 0] and df["end"].tolist() == [29, 19, 9]  # 0-based inclusive
    assert df["num_frames"].tolist() == [30, 16, 10]
    assert df["media"].tolist() == ["frames"] * 3
    assert report.num_rows == 3 and report.num_unlabelled == 1 and not report.bad_lines
    assert (tmp_path / "classes.txt").read_text() == classes.read_text()  # copied beside the manifest


def test_index_tsn_and_mmaction(tmp_path, classes):
    (tmp_path / "tsn.txt").write_text("frames/v1 40 1\nframes/v2 12 2\n")
    index_annotations(tmp_path / "tsn.txt", fmt="tsn", root=tmp_path, classes_uri=classes, out_uri=tmp_path / "t.parquet", split="val")
    df = read_manifest(tmp_path / "t.parquet")
    assert df[["video", "num_frames", "label", "split", "media"]].values.tolist() == [
        ["frames/v1", 40, 1, "val", "frames"],
        ["frames/v2", 12, 2, "val", "frames"],
    ]
    (tmp_path / "mm.txt").write_text("vids/a b.mp4 0\nvids/c.webm 2\n")
    index_annotations(tmp_path / "mm.txt", fmt="mmaction", root=tmp_path, classes_uri=classes, out_uri=tmp_path / "mm.parquet")
    df = read_manifest(tmp_path / "mm.parquet")
    assert df["video"].tolist() == ["vids/a b.mp4", "vids/c.webm"]
    assert df["media"].tolist() == ["video", "video"] and "split" not in df.columns


def test_bad_lines_are_reported_with_numbers_and_skipped(tmp_path, classes):
    ann = tmp_path / "list.txt"
    ann.write_text(
        "# comment\n"
        "v/a.mp4 0\n"  # line 2 ok
        "v/b.mp4\n"  # line 3: too few fields
        "v/c.mp4 one\n"  # line 4: label not an integer
        "\n"
        "v/d.mp4 7\n"  # line 6: label out of range (3 classes)
        "v/e.mp4 2\n"  # line 7 ok
    )
    report = index_annotations(ann, fmt="mmaction", root=tmp_path, classes_uri=classes, out_uri=tmp_path / "m.parquet")
    assert [b.line_number for b in report.bad_lines] == [3, 4, 6]
    assert report.bad_lines[0].content == "v/b.mp4"
    assert "not an integer" in report.bad_lines[1].reason and "outside the 3 classes" in report.bad_lines[2].reason
    assert read_manifest(tmp_path / "m.parquet")["video"].tolist() == ["v/a.mp4", "v/e.mp4"]
    text = report.summary()
    assert "line 3" in text and "line 6" in text and "skipped 3 bad lines" in text


def test_bad_frame_counts_in_tsn_and_ibm(tmp_path, classes):
    (tmp_path / "t.txt").write_text("f/a x 1\nf/b 0 1\nf/c 5 1\n")
    report = index_annotations(tmp_path / "t.txt", fmt="tsn", root=tmp_path, classes_uri=classes, out_uri=tmp_path / "t.parquet")
    assert [b.line_number for b in report.bad_lines] == [1, 2]
    (tmp_path / "i.txt").write_text("f/a 10 5 1\nf/b 1 5 1 2 3\nf/c 1 5 1\n")
    report = index_annotations(tmp_path / "i.txt", fmt="ibm", root=tmp_path, classes_uri=classes, out_uri=tmp_path / "i.parquet")
    assert [b.line_number for b in report.bad_lines] == [1, 2]


def test_all_lines_bad_raises(tmp_path, classes):
    (tmp_path / "l.txt").write_text("a.mp4 9\nb.mp4\n")
    with pytest.raises(ManifestError, match="no usable line.*line 1"):
        index_annotations(tmp_path / "l.txt", fmt="mmaction", root=tmp_path, classes_uri=classes, out_uri=tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()


def test_absolute_paths_become_relative_and_outside_paths_are_bad(tmp_path, classes):
    root = tmp_path / "root"
    (tmp_path / "l.txt").write_text(f"{root}/v/a.mp4 0\n/elsewhere/b.mp4 1\n")
    report = index_annotations(tmp_path / "l.txt", fmt="mmaction", root=root, classes_uri=classes, out_uri=tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet")["video"].tolist() == ["v/a.mp4"]
    assert report.bad_lines[0].line_number == 2 and "outside the root" in report.bad_lines[0].reason
    assert "data.root=" in report.summary()


def test_forced_media_and_unknown_format(tmp_path, classes):
    (tmp_path / "l.txt").write_text("clips/a 0\n")
    index_annotations(tmp_path / "l.txt", fmt="mmaction", root=tmp_path, classes_uri=classes, out_uri=tmp_path / "m.parquet", media="video")
    assert read_manifest(tmp_path / "m.parquet")["media"].tolist() == ["video"]
    with pytest.raises(ManifestError, match="unknown annotation format 'kinetics'"):
        index_annotations(tmp_path / "l.txt", fmt="kinetics", root=tmp_path, classes_uri=classes, out_uri=tmp_path / "x.parquet")


def test_index_records_its_root_and_every_consumer_defaults_to_it(tmp_path, synth_dataset):
    """A manifest indexed away from its videos: `data index --root` records the root, so `data check`,
    `data prepare`, training and benchmarks find the videos without it; an explicit root still wins."""
    from actionlab.config import resolve
    from actionlab.data import encode, prepare
    from actionlab.data.check import check_manifest
    from actionlab.data.manifest import default_root, default_root_note
    from actionlab.train import launch

    root = synth_dataset.parent
    rows = read_manifest(synth_dataset).head(3)
    (tmp_path / "list.txt").write_text("".join(f"{v} {lab}\n" for v, lab in zip(rows["video"], rows["label"])))
    out = tmp_path / "elsewhere" / "manifest.parquet"
    out.parent.mkdir()
    index_annotations(tmp_path / "list.txt", fmt="mmaction", root=root, classes_uri=root / "classes.txt", out_uri=out)

    assert default_root(out) == default_root(out, read_manifest(out)) == str(root.resolve())
    assert default_root(synth_dataset) == str(root)  # nothing recorded: the manifest's folder
    assert default_root_note(out) == "default: recorded in the manifest by `data index`"
    assert default_root_note(synth_dataset) == "default: the manifest's folder"
    assert check_manifest(out).num_bad == 0
    assert check_manifest(out, root=tmp_path).num_bad == 3  # explicit root wins
    assert launch.resolve_data(resolve({}, [f"data.manifest={out}"])).root == str(root.resolve())
    assert launch.resolve_data(resolve({}, [f"data.manifest={out}", f"data.root={tmp_path}"])).root == str(tmp_path)
    report = prepare.prepare_dataset(str(out), str(tmp_path / "prepared"), encode.EncodeSettings(short_side_px=32),
                                     use_ray=False, log=lambda _: None)
    assert report.bad == () and report.num_videos == 3
    prepared = tmp_path / "prepared" / "manifest.parquet"
    assert default_root(prepared) == str(tmp_path / "prepared")  # its videos lie beside it: no root recorded
