"""Shipped recipes are the seeds' tables: every row names its paper's numbers, inheritance stays one
level deep, and `list --recipes` / `flops` report what the built models cost."""

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from actionlab.cli import main
from actionlab.config import ConfigError, read_recipe, resolve, shipped_recipes
from workloads import get_workload


def _is_smoke(name: str) -> bool:
    return name == "smoke" or name.endswith("_smoke")


TABLE_ROWS = [n for n in shipped_recipes() if not _is_smoke(n)]


def test_every_seed_has_rows():
    sources = {read_recipe(n).paper.source.split(":")[0] for n in TABLE_ROWS}
    assert {"AFNet seed", "SV-Mix seed", "IBM seed", "SLLM seed", "HSAR seed"} <= sources


@pytest.mark.parametrize("name", TABLE_ROWS)
def test_every_table_row_carries_the_papers_numbers(name):
    recipe = read_recipe(name)
    paper = recipe.paper
    assert paper is not None, f"{name}: a table row needs a `paper:` block (smoke recipes are the only exception)"
    assert paper.source and paper.dataset
    assert paper.top1 is not None or paper.note, f"{name}: top1 null needs a note saying why"
    assert paper.top1 is None or 0 < paper.top1 < 100
    cfg = resolve(recipe.values)
    assert re.fullmatch(r"\d+x\d+", paper.views)
    assert paper.views == f"{cfg.eval.num_clips}x{cfg.eval.num_crops}", f"{name}: test views differ from the paper's"


@pytest.mark.parametrize("name", [n for n in shipped_recipes() if _is_smoke(n)])
def test_smoke_recipes_claim_no_paper(name):
    assert read_recipe(name).paper is None


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_base_is_merged_key_by_key_and_paper_stays_with_its_row(tmp_path):
    base = _write(tmp_path / "base.yaml", """
workload: {name: tsm, params: {backbone: resnet18, fold_div: 4}}
optim: {lr: 0.1, weight_decay: 0.001}
paper: {source: "base table", dataset: sthv1, top1: 40.0, views: 1x1}
""")
    child = _write(tmp_path / "child.yaml", f"""
base: {base}
workload: {{params: {{fold_div: 8}}}}
optim: {{lr: 0.02}}
paper: {{source: "child table", dataset: sthv2, top1: 50.0, views: 1x1}}
""")
    recipe = read_recipe(child)
    cfg = resolve(recipe.values)
    assert cfg.workload.params == get_workload("tsm").params_cls(backbone="resnet18", fold_div=8)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.02, 0.001)
    assert (recipe.paper.source, recipe.paper.top1) == ("child table", 50.0)
    bare = _write(tmp_path / "bare.yaml", f"base: {base}\n")
    assert read_recipe(bare).paper is None  # a row never claims its base's numbers
    switched = _write(tmp_path / "switched.yaml", f"base: {base}\nworkload: {{name: tam}}\n")
    assert resolve(read_recipe(switched).values).workload.params == get_workload("tam").params_cls()  # params belong to their workload


def test_base_is_one_level_deep(tmp_path):
    top = _write(tmp_path / "top.yaml", "optim: {lr: 0.1}\n")
    mid = _write(tmp_path / "mid.yaml", f"base: {top}\n")
    low = _write(tmp_path / "low.yaml", f"base: {mid}\n")
    with pytest.raises(ConfigError, match="one level deep"):
        read_recipe(low)


def test_paper_block_is_checked(tmp_path):
    typo = _write(tmp_path / "typo.yaml", "paper: {source: x, top_1: 40.0}\n")
    with pytest.raises(ConfigError, match="did you mean 'top1'"):
        read_recipe(typo)
    nosource = _write(tmp_path / "nosource.yaml", "paper: {top1: 40.0}\n")
    with pytest.raises(ConfigError, match="source"):
        read_recipe(nosource)
    with pytest.raises(ConfigError, match="unknown config key 'paper'"):
        resolve({"paper": {"source": "x"}})  # the config schema itself never accepts it


def test_list_recipes_prints_the_tables(capsys):
    assert main(["list", "--recipes", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = {r["recipe"]: r for r in listing["recipes"]}
    assert set(rows) == set(TABLE_ROWS)
    row = rows["afnet_tsm_r50_rt04_sthv1_12f"]
    assert (row["workload"], row["dataset"], row["frames"], row["views"]) == ("afnet", "sthv1", 12, "1x1")
    assert (row["paper_top1"], row["paper_gflops"], row["gmacs"]) == (49.0, 27.9, None)
    assert any("(8+16)" in r["row"] for r in listing["not_runnable"])
    assert main(["list", "--recipes"]) == 0
    text = capsys.readouterr().out
    assert "afnet_tsm_r50_rt04_sthv1_12f" in text and "not runnable" in text


GFLOPS_ROWS = [n for n in TABLE_ROWS if read_recipe(n).paper.gflops is not None]


_MEASURED: dict = {}  # rows that differ only by dataset build the same model: counted once


@pytest.mark.parametrize("name", GFLOPS_ROWS)
def test_paper_gflops_match_the_built_model_or_say_why(name):
    """Every row's `paper.gflops` within 5% of what its built model counts (meta device), or a `gflops_note`
    saying why not; a note on a row that matches is stale."""
    recipe = read_recipe(name)
    cfg = resolve(recipe.values)
    key = json.dumps([cfg.workload.name, str(cfg.workload.params), cfg.clip.num_frames, cfg.clip.size_px])
    if key not in _MEASURED:
        from actionlab.flops import recipe_gmacs

        _MEASURED[key] = recipe_gmacs(cfg)
    measured = _MEASURED[key]
    off = abs(measured / recipe.paper.gflops - 1.0)
    if off > 0.05:
        assert recipe.paper.gflops_note, (f"{name}: paper {recipe.paper.gflops} GFLOPs, built model {measured:.2f} "
                                          f"GMACs ({off:.1%} off): find why and write it as paper.gflops_note")
    else:
        assert not recipe.paper.gflops_note, f"{name}: {measured:.2f} GMACs is within 5% of the paper; drop gflops_note"


def test_rows_off_by_more_than_5_percent_are_the_known_ones():
    noted = {n for n in GFLOPS_ROWS if read_recipe(n).paper.gflops_note}
    assert noted == {"afnet_r50_rt025_sthv1_8f", "afnet_tsm_r101_rt04_sthv1_12f", "afnet_tsm_r101_rt08_sthv1_12f",
                     "hsar_base_k400", "hsar_base_k600", "hsar_base_sthv2"}


def _flops(capsys, *args) -> dict:
    assert main(["flops", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_afnet_compute_by_ratio_measures_the_papers_ratios():
    # AF-MobileNetV3 (2.2 GMACs per 12-frame clip): the cheapest network with rows in the paper's table.
    spec = get_workload("afnet")
    rows = spec.compute_by_ratio({"backbone": "mobilenetv3"}, num_frames=12, size_px=224, num_classes=174)
    assert [r["rt"] for r in rows] == [0.4, 0.8]  # the table's ratios at 12 frames
    assert [r["paper_gmacs"] for r in rows] == [2.2, 2.3]
    assert [r["measured_gmacs"] for r in rows] == pytest.approx([2.2, 2.3], rel=0.02)
    assert not any(r["configured"] for r in rows)


def test_flops_set_rt_changes_what_it_reports(capsys):
    tiny = ["afnet", "--frames", "8", "--size", "64", "--set", "layers=[2, 2, 2, 1]", "--set", "width=16"]
    assert _flops(capsys, *tiny)["by_ratio"] == []  # not the paper's network: no table ratios
    low = _flops(capsys, *tiny, "--set", "rt=0.25")
    high = _flops(capsys, *tiny, "--set", "rt=0.75")
    assert [(r["rt"], r["kept_frames"], r["configured"]) for r in low["by_ratio"]] == [(0.25, 2, True)]
    assert [(r["rt"], r["kept_frames"], r["configured"]) for r in high["by_ratio"]] == [(0.75, 6, True)]
    assert low["by_ratio"][0]["measured_gmacs"] < high["by_ratio"][0]["measured_gmacs"]
    dotted = _flops(capsys, "afnet", "--frames", "8", "--size", "64", "--set", "workload.params.layers=[2, 2, 2, 1]",
                    "--set", "workload.params.width=16", "--set", "workload.params.rt=0.25")
    assert dotted == low  # the train-style key and the shorthand are one override


def test_flops_takes_frames_from_the_config_key_and_refuses_keys_without_effect(capsys):
    assert _flops(capsys, "tsm", "--set", "clip.num_frames=16")["frames"] == 16
    assert main(["flops", "tsm", "--set", "optim.lr=0.1"]) == 2
    assert "does not change the model" in capsys.readouterr().err
    assert main(["flops", "tsm", "--set", "fold_dvi=4"]) == 2
    assert "did you mean 'fold_div'" in capsys.readouterr().err


def test_bench_model_takes_dotted_and_bare_params(capsys):
    args = ["bench", "model", "tsm", "--tiny", "--frames", "2", "--size", "32", "--batch-size", "1", "--iters", "1",
            "--device", "cpu", "--json"]
    assert main([*args, "--set", "workload.params.fold_div=4", "--set", "clip.size_px=48"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and rows[0]["gmacs"] > 0
    assert main([*args, "--set", "fold_div=4", "--size", "48"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["gmacs"] == rows[0]["gmacs"]
