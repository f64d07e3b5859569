"""`actionlab bench`: rows per setting, the first being the baseline measured in the same run."""

import pytest

from actionlab.bench.model import bench, parse_sweep


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

    from actionlab.bench.data import available_decoders
    from actionlab.cli import main
    from actionlab.data.profile import STAGES

    decoders = available_decoders()
    assert main(["bench", "data", str(synth_dataset), "--frames", "4", "--size", "32", "--clips", "2", "--rounds",
                 "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert "round 2/2 done" in out
    rows = json.loads(out[out.index("["):])  # after the progress lines
    readers = [(d, "rgb") for d in decoders] + [("pyav", "yuv420"), ("pyav", "yuv420 crop")] * ("pyav" in decoders)
    assert [(r["decoder"], r["pixels"]) for r in rows] == readers  # no codec-alone row: keyframes are apart
    videos = list((synth_dataset.parent / "videos").glob("*.mp4"))
    mean_mb = sum(v.stat().st_size for v in videos) / len(videos) / 1e6
    for r in rows:
        assert r["name"] == synth_dataset.parent.name and r["psnr_db"] is None
        assert set(r["stages_ms"]) == set(STAGES) and r["stages_ms"]["decode"] > 0 and r["stages_ms"]["augment"] > 0
        assert r["clips_per_core_s"] > 1.0  # 4 frames of a 32 px file: well under a second of CPU each
        assert r["ms_per_clip"] == pytest.approx(1e3 / r["clips_per_core_s"])
        assert r["cores_per_gpu"] == pytest.approx(1500.0 / r["clips_per_core_s"])
        assert r["mb_per_video"] == pytest.approx(mean_mb, rel=0.05)
        assert r["speedup"] == pytest.approx(r["clips_per_core_s"] / rows[0]["clips_per_core_s"])


def test_all_intra_files_get_a_codec_alone_row_that_only_opens_seeks_and_decodes(synth_dataset, tmp_path):
    """On `data prepare`'s default copies the codec alone is the floor under the readers: its row has
    open, seek and decode and nothing else, and each reader's share of it is reported."""
    from actionlab.bench import data as bench_data
    from actionlab.data import encode, prepare

    report = prepare.prepare_dataset(str(synth_dataset), str(tmp_path / "prepared"),
                                     encode.EncodeSettings(short_side_px=32), use_ray=False, log=lambda _: None)
    sets = bench_data.reader_sets("prepared", report.manifest, ["pyav"])
    assert [d.pixels for d in sets] == ["rgb", "yuv420", bench_data.YUV_CROP, bench_data.CODEC_ALONE]
    rows = bench_data.bench_data(sets, num_frames=4, size_px=32, clips_per_round=2, rounds=1, log=lambda _: None)
    codec = rows[-1].stages_ms
    assert codec["open"] > 0 and codec["decode"] > 0
    assert all(codec[stage] == 0 for stage in ("convert", "augment", "collate", "normalise"))
    assert rows[2].stages_ms["normalise"] > 0  # the crop row's resize is timed with the batch's conversion
    (line,) = bench_data.codec_shares(rows)
    assert line.startswith("  prepared: share of the codec alone's") and "pyav yuv420 / pyav rgb = " in line
    assert "pyav yuv420 crop / pyav rgb = " in line


@pytest.mark.parametrize("resize_on", ["loader", "device"])
def test_data_only_runs_the_loader_in_process_beside_the_bare_rate(synth_dataset, capsys, resize_on):
    """`bench train --data-only` with the loader engine: in this process, no Ray, no model in the loop."""
    import json

    from actionlab.cli import main

    sets = [f"--set=data.manifest={synth_dataset}", "--set=schedule.epochs=2", "--set=data.num_loader_workers=0",
            "--set=clip.size_px=32", "--set=clip.resize_px=36", "--set=data.batch_size=4", "--set=data.pixels=yuv420",
            "--set=workload.params.backbone=resnet10t", "--set=clip.num_frames=2", f"--set=data.resize_on={resize_on}",
            "--set=data.decoder=pyav"]  # decord hands over RGB only
    assert main(["bench", "train", "smoke", "--data-only", "--json", *sets]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["clips_per_s"]) == 2 and min(out["clips_per_s"]) > 0
    assert out["bare_clips_per_core_s"] > 0 and out["step_clips_per_s"] > 0
    assert out["train_nodes"] == ["this process"] and out["pinned"] is False
    assert out["batches"] == {"loader": "i420", "device": "crops"}[resize_on]
    # A bare round before each epoch and after the last; epoch 2 against the rounds around it (1 core: 0 workers).
    bare, delivered = out["bare_rounds"], out["clips_per_s"]
    assert len(bare) == 3 and min(bare) > 0
    assert out["delivered_share"] == pytest.approx(delivered[1] / ((bare[1] + bare[2]) / 2))
    if resize_on == "loader":
        assert main(["bench", "train", "smoke", "--data-only", *sets]) == 0
        text = capsys.readouterr().out
        assert "bare decode rate" in text and "(median of 3 rounds, " in text
        assert "delivered / (bare x 1 worker cores) = " in text and "; this run has 0 workers on " in text


def test_the_gpu_checks_crop_batch_has_multi_scale_shapes_and_normalises_to_rgb():
    """`bench.gpu`'s I420 crops row (GPU only) times this batch; here its making and its resize on the CPU."""
    from actionlab.bench.gpu import crop_batch
    from actionlab.train.evaluate import normalise, stats_tensors

    batch = crop_batch(8, 2, 64, height=96, width=128)
    assert len(batch) == 8 and len({shape[1:3] for shape in batch.shapes}) > 1 and any(batch.flips)
    mean, std = stats_tensors((0.5,) * 3, (0.25,) * 3, "cpu")
    assert normalise(batch, mean, std).shape == (8, 2, 3, 64, 64)
