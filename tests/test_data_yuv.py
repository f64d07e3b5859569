"""`data.pixels=yuv420`: clips cropped on YUV 4:2:0 planes and converted per batch equal today's RGB clips.

Tolerances, on pixels normalised to [0, 1], for two reasons the paths differ:
1. BT.601 limited-range arithmetic: swscale converts in fixed point and rounds to uint8, the batch
   kernel in float; both repeat each chroma sample 2x2. Where a crop is not resized (test views of
   frames whose short side already is resize_px, even boxes) that is all: mean |difference| <= 1.5/255,
   99% of pixels within 4/255 (measured about 1.1 and 2.4).
2. Chroma resolution and siting when a crop is resized: the RGB path resizes chroma repeated to full
   resolution, the YUV path resizes the chroma plane at half resolution and hands over 4:2:0 (the
   point: 1.5 bytes a pixel), and on odd box edges its chroma is up to one decoded pixel off. On this
   worst-case video (8-pixel blocks of independent random colours: a chroma edge every 4 chroma
   samples) that gives mean <= 7/255 and 99% within 64/255 (measured 2.7-5.3 and 24-53 over 12 train
   crops); camera video has far less chroma detail. A missed flip or a crop 4 pixels off measured mean
   20-61/255 and p99 118-188/255, so both bounds still catch a misplaced crop.
"""

import dataclasses

import pandas as pd
import pytest
import torch
from PIL import Image

from actionlab.bench import data as bench_data
from actionlab.data import decode, yuv
from actionlab.data.dataset import VideoClipDataset, collate_clips
from actionlab.train.evaluate import normalise, stats_tensors
from workloads import InputFormat

MEAN, STD = stats_tensors((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "cpu")  # [0, 1] pixels
FORMAT = InputFormat(sampling="segments", num_frames=4, stride=1, size_px=84, resize_px=96)
COMMON = dict(num_classes=2, fmt=FORMAT, scales=(1.0, 0.875, 0.75, 0.66), flip="swap_pairs", flip_pairs={0: 1, 1: 0},
              decoder="pyav")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A camera-like 128x96 H.264 file (texture, moving objects, noise) and a JPEG frame folder of it."""
    root = tmp_path_factory.mktemp("yuv")
    (root / "v").mkdir()
    bench_data.make_kinetics_like(root / "v" / "a.mp4", seed=3, width=128, height=96, fps=24, seconds=1,
                                  keyint=8, bitrate=800_000)
    frames = decode.read_frames(root / "v" / "a.mp4", range(24), decoder="pyav")  # (24, H, W, 3)
    (root / "f").mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(root / "f" / f"{i + 1:05d}.jpg", quality=90)
    df = pd.DataFrame({"video": ["v/a.mp4", "f", "v/a.mp4"], "label": [0, 1, 1],
                       "media": ["video", "frames", "video"], "num_frames": [24, 24, 24]})
    return root, df


def _pair(media, **kwargs):
    root, df = media
    return [VideoClipDataset(df=df, root=str(root), pixels=p, **(COMMON | kwargs)) for p in ("rgb", "yuv420")]


RESIZED, NOT_RESIZED = (7, 64), (1.5, 4)  # (mean, 99th percentile) of |difference| x 255


def _close(rgb: torch.Tensor, packed: torch.Tensor, tolerance=RESIZED) -> None:
    assert yuv.is_i420(packed) and not yuv.is_i420(rgb)
    a, b = normalise(rgb, MEAN, STD), normalise(packed, MEAN, STD)
    assert a.shape == b.shape
    diff = (a - b).abs().flatten() * 255
    assert diff.mean() <= tolerance[0] and diff.quantile(0.99) <= tolerance[1], (diff.mean(), diff.quantile(0.99))


def test_train_clips_match_the_rgb_path(media):
    rgb, planes = _pair(media, train=True)
    for index in (0, 2):
        for epoch in range(6):  # several crops, scales and flips
            rgb.set_epoch(epoch)
            planes.set_epoch(epoch)
            a, b = rgb[index], planes[index]
            assert a["label"] == b["label"]  # the same draws: swap_pairs flips the same clips
            assert b["clip"].shape == (4, 1, 126, 84)  # I420: 1.5 bytes a pixel
            _close(a["clip"].unsqueeze(0), b["clip"].unsqueeze(0))


def test_multi_view_test_clips_match_the_rgb_path(media):
    rgb, planes = _pair(media, train=False, num_clips=2, num_crops=3)  # 96 px short side: crops not resized
    a, b = rgb[0]["clip"], planes[0]["clip"]
    assert a.shape == (6, 4, 3, 84, 84) and b.shape == (6, 4, 1, 126, 84)
    _close(a, b, NOT_RESIZED)
    rgb, planes = _pair(media, train=False, num_crops=3, fmt=dataclasses.replace(FORMAT, resize_px=112))  # resized
    _close(rgb[0]["clip"], planes[0]["clip"])


def test_a_swapped_chroma_or_a_missed_flip_would_fail(media):
    rgb, planes = (ds[0]["clip"] for ds in _pair(media, train=False))
    swapped = planes.clone()
    swapped[..., 84:105, :], swapped[..., 105:, :] = planes[..., 105:, :], planes[..., 84:105, :]  # U <-> V
    for wrong in (swapped, planes.flip(-1)):
        with pytest.raises(AssertionError):
            _close(rgb, wrong)


def test_frame_folders_and_decord_stay_rgb_and_give_the_same_batch(media):
    rgb, planes = _pair(media, train=True)
    torch.testing.assert_close(rgb[1]["clip"], planes[1]["clip"], rtol=0, atol=0)  # a frame folder
    pytest.importorskip("decord")
    rgb, planes = _pair(media, train=True, decoder="decord")
    torch.testing.assert_close(rgb[0]["clip"], planes[0]["clip"], rtol=0, atol=0)


def test_a_batch_mixing_planes_and_rgb_becomes_rgb(media):
    rgb, planes = _pair(media, train=True)
    batch = collate_clips([planes[0], planes[1]])  # a video (I420) and a frame folder (RGB)
    assert batch["clip"].shape == (2, 4, 3, 84, 84)
    diff = (batch["clip"][0].float() - rgb[0]["clip"].float()).abs()
    assert diff.mean() <= RESIZED[0] and diff.quantile(0.99) <= RESIZED[1]


def test_predict_scores_the_same(media):
    from actionlab.models.meta import ModelMeta
    from actionlab.models.predict import predict_videos
    from actionlab.models.folder import LoadedModel

    root, _ = media
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 84 * 84, 5)).eval()
    loaded = LoadedModel(model, ModelMeta("toy", None, tuple("abcde"), FORMAT), "test")
    video = str(root / "v" / "a.mp4")
    a, b = (predict_videos(loaded, [video], top_k=5, pixels=p)[0]["top"] for p in ("rgb", "yuv420"))
    assert [r["label"] for r in a][:2] == [r["label"] for r in b][:2]
    assert max(abs(x["prob"] - y["prob"]) for x, y in zip(sorted(a, key=lambda r: r["label"]),
                                                             sorted(b, key=lambda r: r["label"]))) < 0.02


def test_auto_pixels_take_yuv_only_with_a_gpu(monkeypatch):
    from actionlab.config import resolve
    from actionlab.train.inputs import pixels_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pixels_for(resolve({}, [])) == "rgb"
    assert pixels_for(resolve({}, ["data.pixels=yuv420"])) == "yuv420"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pixels_for(resolve({}, [])) == "yuv420"
    assert pixels_for(resolve({}, ["compute.use_gpu=false"])) == "rgb"
    assert pixels_for(resolve({}, ["data.pixels=rgb"])) == "rgb"


def test_clips_resized_on_the_device_equal_the_loaders_within_rounding(media):
    """`resize_on=device`: the loader hands over the crop box's planes (`yuv.Crops`), resized per batch
    in float where it is normalised; the same draws as the loader's resize, which rounds to uint8."""
    root, df = media
    loader, device = (VideoClipDataset(df=df, root=str(root), pixels="yuv420", train=True, resize_on=r, **COMMON)
                      for r in yuv.RESIZE_ON)
    for epoch in range(6):  # several crops, scales and flips
        loader.set_epoch(epoch)
        device.set_epoch(epoch)
        items = [device[0], device[2]]
        assert all(isinstance(item["clip"], yuv.Crops) for item in items)
        assert [item["label"] for item in items] == [loader[0]["label"], loader[2]["label"]]
        batch = collate_clips(items)
        assert isinstance(batch["clip"], yuv.Crops) and len(batch["clip"]) == 2
        expected = torch.stack([loader[0]["clip"], loader[2]["clip"]]).float()  # (2, T, 1, 3S/2, S) uint8 values
        got = batch["clip"].packed()
        assert got.shape == expected.shape == (2, 4, 1, 126, 84)
        assert (got - expected).abs().max() <= 1.01  # the uint8 kernel rounds (fixed-point weights): nothing more
        torch.testing.assert_close(normalise(batch["clip"], MEAN, STD), normalise(expected, MEAN, STD),
                                   rtol=0, atol=3.5 / 255)  # 1 of Y and U/V: up to 1.16 + 2.02 in B
    wrong = collate_clips([device[0]])["clip"]
    wrong.flips[0] = not wrong.flips[0]
    assert (wrong.packed()[0] - loader[0]["clip"].float()).abs().mean() > 5  # a lost flip would show


def test_crops_among_rgb_items_are_resized_in_the_loader_and_the_batch_is_rgb(media):
    root, df = media
    rgb, device = (VideoClipDataset(df=df, root=str(root), pixels=p, train=True, resize_on=r, **COMMON)
                   for p, r in (("rgb", "loader"), ("yuv420", "device")))
    batch = collate_clips([device[0], device[1]])  # a video (crop) and a frame folder (RGB)
    assert batch["clip"].shape == (2, 4, 3, 84, 84) and batch["clip"].dtype == torch.uint8
    diff = (batch["clip"][0].float() - rgb[0]["clip"].float()).abs()
    assert diff.mean() <= RESIZED[0] and diff.quantile(0.99) <= RESIZED[1]


def test_crops_travel_through_loader_workers(media):
    """Items made in DataLoader worker processes (shared-memory tensors inside `yuv.Crops`)."""
    from torch.utils.data import DataLoader

    root, df = media
    device = VideoClipDataset(df=df.iloc[[0, 2]].reset_index(drop=True), root=str(root), pixels="yuv420", train=True,
                              resize_on="device", **COMMON)
    (batch,) = list(DataLoader(device, batch_size=2, num_workers=1, collate_fn=collate_clips))
    torch.testing.assert_close(batch["clip"].packed(), collate_clips([device[0], device[1]])["clip"].packed())


def test_auto_resize_on_the_device_only_with_a_gpu_and_a_dataloader(monkeypatch):
    from actionlab.config import ConfigError, resolve
    from actionlab.train.inputs import resize_on

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resize_on(resolve({}, [])) == "loader"
    assert resize_on(resolve({}, ["data.resize_on=device"])) == "device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resize_on(resolve({}, [])) == "device"
    assert resize_on(resolve({}, ["data.engine=ray"])) == "loader"
    with pytest.raises(ConfigError, match="data.engine=loader"):  # when the config is read, before any Ray
        resolve({}, ["data.engine=ray", "data.resize_on=device"])


def test_crops_of_one_shape_are_resized_together_and_keep_their_own_flip():
    gen = torch.Generator().manual_seed(0)
    planes = yuv.Planes(*(torch.randint(16, 236, shape, generator=gen, dtype=torch.uint8).numpy()
                          for shape in ((4, 64, 86), (4, 32, 43), (4, 32, 43))))
    boxes = [((3, 5, 51, 53), False), ((3, 5, 51, 53), True), ((1, 2, 40, 41), True), ((0, 0, 64, 64), False),
             ((1, 2, 40, 41), False), ((8, 8, 40, 40), True)]  # the last one is not resized
    batch = yuv.Crops.cat([yuv.Crops.crop(planes, box, 32, flip=flip) for box, flip in boxes]).packed()
    assert yuv.Crops.crop(planes, (1, 2, 40, 41), 32).shapes == [(4, 39, 39, 20, 20)]  # shipped as cropped
    assert yuv.Crops.crop(planes, (0, 0, 64, 64), 32).shapes == [(4, 32, 32, 16, 16)]  # 4x the output: resized here
    for got, (box, flip) in zip(batch, boxes):
        assert (got - yuv.crop_resize(planes, box, 32, flip=flip).float()).abs().max() <= 1.01
