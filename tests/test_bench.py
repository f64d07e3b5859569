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
    assert rows[0].speedup == 1.0 and all(r.clips_per_s > 0 for r in rows)
    assert rows[0].gmacs == pytest.approx(rows[1].gmacs)  # the shift costs no MACs
