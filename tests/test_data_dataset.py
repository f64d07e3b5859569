"""The clip dataset over real files: items, views, bad samples, determinism, a 2-worker DataLoader."""

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
import torch

from actionlab.data import manifest
from actionlab.data.dataset import VideoClipDataset, build_dataset, collate_clips
from actionlab.data.loader import make_loader
from workloads import InputFormat

FORMAT = dict(sampling="segments", num_frames=4, stride=1, size_px=24, resize_px=28)
COMMON = dict(num_classes=4, scales=(1.0, 0.875, 0.75), flip="swap_pairs", flip_pairs={0: 1, 1: 0})
_FORMAT_KEYS = {f.name for f in dataclasses.fields(InputFormat)}


def _dataset(df, root, **kwargs):
    """A training dataset; keys of `InputFormat` go into its format, the others to the dataset."""
    fmt = InputFormat(**(FORMAT | {k: v for k, v in kwargs.items() if k in _FORMAT_KEYS}))
    rest = {k: v for k, v in kwargs.items() if k not in _FORMAT_KEYS}
    return VideoClipDataset(df=df, root=root, fmt=fmt, **(COMMON | dict(train=True) | rest))


def test_train_items(synth_dataset):
    df = manifest.select_split(manifest.read_manifest(synth_dataset), "train")
    ds = _dataset(df, synth_dataset.parent)
    item = ds[0]
    assert item["clip"].shape == (4, 3, 24, 24) and item["clip"].dtype == torch.uint8
    assert item["video_id"] == df["video"][0] and item["label"] in (0, 1)


def test_dense_sampling_item(synth_dataset):
    df = manifest.read_manifest(synth_dataset)
    ds = _dataset(df, synth_dataset.parent, sampling="clip", num_frames=3, stride=2)
    assert ds[5]["clip"].shape == (3, 3, 24, 24)


def test_test_mode_views_are_clip_major(synth_dataset):
    df = manifest.select_split(manifest.read_manifest(synth_dataset), "val")
    ds = _dataset(df, synth_dataset.parent, train=False, num_clips=2, num_crops=3, resize_px=24)
    item = ds[0]
    assert item["clip"].shape == (6, 4, 3, 24, 24)
    again = ds[0]["clip"]
    torch.testing.assert_close(item["clip"], again)  # deterministic
    single = _dataset(df, synth_dataset.parent, train=False, resize_px=24)[0]["clip"]
    assert single.shape == (1, 4, 3, 24, 24)


def test_build_dataset_takes_the_decoder_the_manifest_names_and_the_mirrored_classes(synth_dataset):
    rows = manifest.select_split(manifest.read_manifest(synth_dataset), "train")
    rows.attrs[manifest.METADATA_ATTR] = {"decoder": "pyav"}  # what `data prepare` records
    fmt = InputFormat(**FORMAT)
    classes = ("move_left", "move_right", "stay", "jump")
    train = build_dataset(rows, fmt, train=True, root=synth_dataset.parent, classes=classes, flip="swap_pairs")
    assert (train.decoder, train.flip_pairs, train.num_classes, train.fmt) == ("pyav", {0: 1, 1: 0}, 4, fmt)
    assert train[0]["clip"].shape == (fmt.clip_frames, 3, 24, 24)
    test = build_dataset(rows, fmt, train=False, root=synth_dataset.parent, classes=classes, decoder="decord",
                         num_clips=2)
    assert (test.decoder, test.flip_pairs) == ("decord", {})
    assert test[0]["clip"].shape == (2, fmt.clip_frames, 3, 24, 24)  # (V, T, C, H, W)


def test_randomness_is_a_function_of_seed_epoch_index(synth_dataset):
    df = manifest.read_manifest(synth_dataset)
    a, b = _dataset(df, synth_dataset.parent), _dataset(df, synth_dataset.parent)
    torch.testing.assert_close(a[3]["clip"], b[3]["clip"])
    clips = {a[3]["clip"].numpy().tobytes()}
    for epoch in range(1, 6):
        a.set_epoch(epoch)
        clips.add(a[3]["clip"].numpy().tobytes())
    assert len(clips) > 1
    b.set_epoch(5)
    torch.testing.assert_close(a[3]["clip"], b[3]["clip"])  # resume at epoch 5 gives the same clips


@pytest.fixture
def bad_root(tmp_path, synth_dataset, index_video):
    """A root with one good video and every kind of bad sample; returns (root, manifest rows)."""
    root = tmp_path / "root"
    (root / "v").mkdir(parents=True)
    good = index_video("root/v/good.mp4", num_frames=12)
    (root / "v" / "zero.mp4").write_bytes(b"")
    (root / "v" / "text.mp4").write_text("not a video at all\n")
    (root / "v" / "trunc.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(good.read_bytes())
    os.symlink(outside, root / "v" / "link_out.mp4")
    os.symlink(good, root / "v" / "link_in.mp4")
    rows = [
        ("v/good.mp4", 0),
        ("v/missing.mp4", 0),
        ("v/zero.mp4", 1),
        ("v/text.mp4", 1),
        ("v/trunc.mp4", 2),
        ("../outside.mp4", 2),
        (str(outside), 3),
        ("v/link_out.mp4", 3),
        ("v/good.mp4", 9),
        ("v/link_in.mp4", 1),
    ]
    return root, pd.DataFrame(rows, columns=["video", "label"])


EXPECTED_KINDS = {
    1: "missing", 2: "empty", 3: "corrupt", 4: ("corrupt", "short"), 5: "outside_root", 6: "outside_root",
    7: "outside_root", 8: "label",
}


def test_bad_samples_become_error_items(bad_root):
    root, df = bad_root
    ds = _dataset(df, root)
    items = [ds[i] for i in range(len(df))]
    for i, item in enumerate(items):
        if i in EXPECTED_KINDS:
            assert "clip" not in item and item["video_id"] == df["video"][i]
            assert item["kind"] in EXPECTED_KINDS[i], (i, item)
            assert os.path.basename(df["video"][i]) in item["error"]
        else:
            assert item["clip"].shape == (4, 3, 24, 24)
    batch = collate_clips(items)
    assert batch["clip"].shape == (2, 4, 3, 24, 24) and batch["label"].tolist() in ([0, 1], [1, 0], [0, 0], [1, 1])
    assert batch["video_id"] == ["v/good.mp4", "v/link_in.mp4"]
    assert [v for v, _ in batch["bad"]] == [df["video"][i] for i in sorted(EXPECTED_KINDS)]
    assert "outside" in dict(batch["bad"])["../outside.mp4"] or "escapes" in dict(batch["bad"])["../outside.mp4"]


def test_collate_all_bad_gives_empty_batch():
    batch = collate_clips([{"error": "x: gone", "kind": "missing", "video_id": "x"}])
    assert batch["clip"].numel() == 0 and batch["label"].numel() == 0 and batch["bad"] == [("x", "x: gone")]


def test_manifest_range_beyond_the_video_is_short(bad_root):
    root, _ = bad_root
    df = pd.DataFrame({"video": ["v/good.mp4", "v/good.mp4"], "label": [0, 0], "start": [2, 5], "end": [9, 20]})
    ds = _dataset(df, root)
    assert "clip" in ds[0]
    assert ds[1]["kind"] == "short" and "ends at frame 20" in ds[1]["error"]


def test_remote_root_needs_a_cache_dir(synth_dataset):
    with pytest.raises(ValueError, match="cache_dir"):
        _dataset(manifest.read_manifest(synth_dataset), "s3://bucket/data")


def test_dataloader_with_two_workers(synth_dataset):
    df = manifest.select_split(manifest.read_manifest(synth_dataset), "train")
    ds = _dataset(df, synth_dataset.parent)
    loader = make_loader(ds, batch_size=4, shuffle=True, num_workers=2, timeout_s=60, drop_last=False)
    seen = []
    for batch in loader:
        assert batch["clip"].dtype == torch.uint8 and batch["clip"].shape[1:] == (4, 3, 24, 24)
        assert batch["bad"] == []
        seen.extend(batch["video_id"])
    assert sorted(seen) == sorted(df["video"])


def test_frame_folder_rows_with_ranges(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames" / "v1"
    folder.mkdir(parents=True)
    for i in range(12):
        Image.fromarray(np.full((30, 40, 3), i * 20, np.uint8)).save(folder / f"{i + 1:05d}.jpg", quality=95)
    df = pd.DataFrame(
        {
            "video": ["frames/v1", "frames/v1", "frames/v1", "frames/v2"],
            "label": [0, 1, 2, 3],
            "start": [0, 8, 0, 0],
            "end": [11, 11, 13, 3],
            "media": ["frames"] * 4,
        }
    )
    ds = _dataset(df, tmp_path, train=False, resize_px=24, flip="off")
    whole, tail = ds[0]["clip"], ds[1]["clip"]  # (1, T, C, H, W)
    assert whole.shape == (1, 4, 3, 24, 24)
    values = tail[0].float().mean(dim=(1, 2, 3)) / 20  # frames 8..11 only
    assert values.min() >= 7.5 and values.max() <= 11.5
    assert ds[2]["kind"] == "short" and ds[3]["kind"] == "missing"


def test_snippet_sampling_reads_runs_of_consecutive_frames(index_video):
    path = index_video(num_frames=24)
    df = pd.DataFrame({"video": [path.name], "label": [0]})
    ds = _dataset(df, path.parent, sampling="snippets", num_frames=2, snippet_frames=5, train=False,
                  num_clips=3, resize_px=24, flip="off")
    views = ds[0]["clip"]  # (3 clips, 2 segments x 5 frames, C, H, W)
    assert views.shape == (3, 10, 3, 24, 24)
    frames = (views.float().mean(dim=(2, 3, 4)) / index_video.step).round().long()  # (3, 10) frame numbers
    # 20 run starts, tick 10: centres 5 and 15; the other test clips shift by -1 / +1
    centre = torch.tensor([5, 6, 7, 8, 9, 15, 16, 17, 18, 19])
    for view, shift in zip(frames, (-1, 0, 1)):
        torch.testing.assert_close(view, centre + shift)
    train = _dataset(df, path.parent, sampling="snippets", num_frames=2, snippet_frames=5, flip="off")[0]["clip"]
    assert train.shape == (10, 3, 24, 24)


def test_snippet_frames_only_with_snippet_sampling(synth_dataset):
    df = manifest.read_manifest(synth_dataset)
    with pytest.raises(ValueError, match="only `snippets` sampling"):
        _dataset(df, synth_dataset.parent, snippet_frames=5)


class _BlockingDataset(torch.utils.data.Dataset):
    """Item `block` never comes back: its worker waits on an event nobody sets."""

    def __init__(self, block=1):
        self.block = block

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == self.block:
            wait_for_a_file_that_never_arrives()
        return {"clip": torch.zeros(1, dtype=torch.uint8), "label": 0, "video_id": str(index)}


def wait_for_a_file_that_never_arrives():
    import threading

    threading.Event().wait()


def test_loader_timeout_names_what_the_stuck_worker_was_doing(capsys):
    from actionlab.data.loader import LoaderTimeout

    loader = make_loader(_BlockingDataset(), batch_size=1, shuffle=False, num_workers=1, timeout_s=3,
                         drop_last=False)
    assert loader.multiprocessing_context.get_start_method() == "forkserver" and loader.persistent_workers
    got = []
    with pytest.raises(LoaderTimeout) as caught:
        for batch in loader:
            got.extend(batch["video_id"])
    assert got == ["0"]
    message = str(caught.value)
    assert "in 3s (data.loader_timeout_s)" in message and "worker 0 (pid " in message
    assert "wait_for_a_file_that_never_arrives" in message and "__getitem__" in message
    assert "wait_for_a_file_that_never_arrives" in capsys.readouterr().err  # on the console too
    loader._iterator._shutdown_workers()


def test_persistent_workers_follow_the_epoch(synth_dataset):
    """Workers started once still draw each epoch's views: the sampler's epoch reaches them through
    `set_epoch`, and what they draw is what the dataset draws in this process."""
    df = manifest.select_split(manifest.read_manifest(synth_dataset), "train")
    ds = _dataset(df, synth_dataset.parent, scales=(1.0, 0.5))
    loader = make_loader(ds, batch_size=len(df), shuffle=False, num_workers=2, timeout_s=60, drop_last=False)
    by_epoch = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        (batch,) = list(loader)
        expected = torch.stack([ds[i]["clip"] for i in range(len(df))])
        assert torch.equal(batch["clip"], expected), f"epoch {epoch}: workers drew another epoch's views"
        by_epoch.append(batch["clip"])
    workers = loader._iterator._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)  # the same workers, started once
    assert not torch.equal(by_epoch[0], by_epoch[1]) and not torch.equal(by_epoch[1], by_epoch[2])


def test_loader_never_forks_and_leaves_the_global_rng_alone():
    with pytest.raises(ValueError, match="start_method='threads' is not one of"):
        make_loader(_BlockingDataset(), batch_size=1, shuffle=False, num_workers=1, timeout_s=1, drop_last=False,
                    start_method="threads")
    loader = make_loader(_BlockingDataset(block=None), batch_size=2, shuffle=False, num_workers=1, timeout_s=60,
                         drop_last=False)
    assert loader.multiprocessing_context.get_start_method() == "forkserver"
    state = torch.get_rng_state()
    assert [v for batch in loader for v in batch["video_id"]] == ["0", "1", "2", "3"]
    assert torch.equal(torch.get_rng_state(), state), "the loader drew its workers' seed from torch's global RNG"
