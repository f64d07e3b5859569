"""`data index --subset`: the IBM study's mini-Kinetics / mini-SSv2 class lists, filtering and renumbering."""

from pathlib import Path

import pandas as pd
import pytest

from actionlab.cli import main
from actionlab.data.manifest import ManifestError, index_annotations, read_classes, subset_classes

SUBSET_DIR = Path(__file__).resolve().parents[1] / "platform" / "actionlab" / "data" / "subsets"


@pytest.mark.parametrize("name, count", [("mini-kinetics", 200), ("mini-ssv2", 87)])
def test_shipped_lists_have_the_published_size_and_name_their_source(name, count):
    names = subset_classes(name)
    assert len(names) == len(set(names)) == count
    assert all(not n.startswith("#") and n == n.strip() for n in names)
    source = "mini_kinetics400.txt" if name == "mini-kinetics" else "mini_ssv2.txt"
    header = (SUBSET_DIR / ("mini_kinetics.txt" if name == "mini-kinetics" else "mini_ssv2.txt")).read_text()
    assert f"https://github.com/IBM/action-recognition-pytorch/blob/" in header and source in header


def test_known_classes_are_in_and_out():
    kinetics = subset_classes("mini-kinetics")
    assert kinetics[0] == "air drumming" and kinetics[-1] == "yoga"  # the published "yoga''." typo fixed
    assert "passing American football (in game)" in kinetics and "abseiling" not in kinetics
    assert subset_classes("mini-ssv2")[0] == "Approaching something with your camera"


def _full_kinetics(tmp_path):
    """A K400-style list: the mini classes (some spelled with underscores) mixed with others."""
    mini = subset_classes("mini-kinetics")
    full = ["abseiling", *[n.replace(" ", "_") if i % 3 == 1 else n for i, n in enumerate(reversed(mini))], "zumba"]
    path = tmp_path / "kinetics400_classes.txt"
    path.write_text("\n".join(full) + "\n")
    return full, path


def test_index_keeps_subset_lines_and_renumbers_labels(tmp_path):
    full, classes = _full_kinetics(tmp_path)
    mini = subset_classes("mini-kinetics")
    yoga, air = full.index("yoga"), full.index("air_drumming")  # positions in the full list
    lines = [f"a.mp4 {yoga}", "b.mp4 0", f"c.mp4 {air}", f"d.mp4 {len(full) - 1}"]
    annotations = tmp_path / "train.txt"
    annotations.write_text("\n".join(lines) + "\n")
    out = tmp_path / "mini" / "manifest.parquet"
    report = index_annotations(annotations, fmt="mmaction", root=tmp_path, classes_uri=classes, out_uri=out,
                               subset="mini-kinetics")
    frame = pd.read_parquet(out)
    assert frame["video"].tolist() == ["a.mp4", "c.mp4"]
    assert frame["label"].tolist() == [mini.index("yoga"), mini.index("air drumming")] == [199, 0]
    assert read_classes(out.parent / "classes.txt") == mini
    assert report.num_outside_subset == 2 and "subset mini-kinetics: dropped 2 lines" in report.summary()


def test_a_subset_class_missing_from_the_full_list_is_named(tmp_path):
    full, classes = _full_kinetics(tmp_path)
    classes.write_text("\n".join(n for n in full if n != "yoga") + "\n")
    annotations = tmp_path / "train.txt"
    annotations.write_text("a.mp4 0\n")
    with pytest.raises(ManifestError, match=r"subset 'mini-kinetics': 1 of its 200 classes are not in .*\['yoga'\]"):
        index_annotations(annotations, fmt="mmaction", root=tmp_path, classes_uri=classes,
                          out_uri=tmp_path / "m.parquet", subset="mini-kinetics")


def test_cli_flag_on_ssv2_tsn_lists(tmp_path, capsys):
    mini = subset_classes("mini-ssv2")
    full = [*mini[::-1], "Not one of the mini classes"]  # SSv2 lists in another order
    classes = tmp_path / "category.txt"
    classes.write_text("\n".join(full) + "\n")
    annotations = tmp_path / "val.txt"
    annotations.write_text(f"1 40 {len(full) - 1}\n2 35 0\n")  # TSN rawframe list: folder frames label
    out = tmp_path / "out" / "manifest.parquet"
    argv = ["data", "index", str(annotations), "--format", "tsn", "--root", str(tmp_path), "--classes", str(classes),
            "-o", str(out), "--subset", "mini-ssv2"]
    assert main(argv) == 0
    frame = pd.read_parquet(out)
    assert frame["video"].tolist() == ["2"] and frame["label"].tolist() == [86]  # the last mini class
    assert "dropped 1 lines" in capsys.readouterr().out
    # a second subset into the same folder would leave the wrong class list beside it
    classes_k = tmp_path / "k.txt"
    classes_k.write_text("\n".join(subset_classes("mini-kinetics")) + "\n")
    annotations.write_text("x.mp4 0\n")
    with pytest.raises(ManifestError, match="already holds another class list"):
        index_annotations(annotations, fmt="mmaction", root=tmp_path, classes_uri=classes_k, out_uri=out,
                          subset="mini-kinetics")
