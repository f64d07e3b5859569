"""`actionlab bench`: rows per setting, the first being the baseline measured in the same run."""

import pytest

from actionlab.bench import bench, parse_sweep


def test_parse_sweep_types_values_and_rejects_bad_syntax():
    assert parse_sweep("drop_rate=0,0.25") == ("drop_rate", [0, 0.25])
    assert parse_sweep("fold_div=4,8") == ("fold_div", [4, 8])
    with pytest.raises(ValueError, match="PARAM=V1,V2"):
        parse_sweep("drop_rate")


def test_bench_rows_share_a_baseline_and_count_compute():
    rows = bench("tsm", params={"backbone": "resnet18"}, sweep=("fold_div", [8, 4]), num_frames=4, size_px=32,
                 num_classes=5, batch_size=1, iters=1, warmup=0, threads=1)
    assert [r.setting for r in rows] == ["fold_div=8", "fold_div=4"]
    assert all(r.clips_per_s > 0 for r in rows)
    assert rows[1].speedup == pytest.approx(rows[1].clips_per_s / rows[0].clips_per_s)  # relative to row 0
    assert rows[0].gmacs == pytest.approx(rows[1].gmacs)  # the shift costs no MACs


def test_bench_data_measures_every_decoder_on_real_files(synth_dataset, capsys):
    import json

    from actionlab.bench_data import available_decoders
    from actionlab.cli import main

    decoders = available_decoders()
    assert main(["bench", "data", str(synth_dataset), "--frames", "4", "--size", "32", "--clips", "2", "--rounds",
                 "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert "round 2/2 done" in out
    rows = json.loads(out[out.index("["):])  # after the progress lines
    assert [r["decoder"] for r in rows] == decoders
    videos = list((synth_dataset.parent / "videos").glob("*.mp4"))
    mean_mb = sum(v.stat().st_size for v in videos) / len(videos) / 1e6
    for r in rows:
        assert r["name"] == f"{synth_dataset.parent.name} ({r['decoder']})" and r["psnr_db"] is None
        assert r["clips_per_core_s"] > 1.0  # 4 frames of a 32 px file: well under a second of CPU each
        assert r["ms_per_clip"] == pytest.approx(1e3 / r["clips_per_core_s"])
        assert r["cores_per_gpu"] == pytest.approx(1500.0 / r["clips_per_core_s"])
        assert r["mb_per_video"] == pytest.approx(mean_mb, rel=0.05)
        assert r["speedup"] == pytest.approx(r["clips_per_core_s"] / rows[0]["clips_per_core_s"])
