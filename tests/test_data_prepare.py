"""`actionlab data prepare`: re-encoded copies on real H.264 files, resumable, bad inputs listed."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import index_frames
from servers.process import REPO, base_env, needs_netns

from actionlab.data import dataset, decode, encode, manifest, prepare, synthetic
from workloads import InputFormat

STEP = 8  # index_frames: pixel value of frame i is i * 8


def _index_dataset(root, *, num_videos=3, num_frames=30, size=(64, 48)):
    """Videos whose frame i has value i * 8, with keyframes only at 0 (as downloads have)."""
    (root / "videos").mkdir(parents=True)
    rows = []
    for i in range(num_videos):
        frames = index_frames(num_frames, height=size[1], width=size[0])
        synthetic.write_mp4(root / "videos" / f"v{i}.mkv.mp4", frames,
                            options={"g": "250", "bf": "3", "crf": "10", "preset": "ultrafast"})
        rows.append({"video": f"videos/v{i}.mkv.mp4", "label": i % 2, "split": "val" if i == 0 else "train"})
    (root / "classes.txt").write_text("a\nb\n")
    (root / "manifest.parquet").write_bytes(manifest.manifest_bytes(pd.DataFrame(rows)))
    return root / "manifest.parquet"


def _values(frames):
    return frames.reshape(len(frames), -1).mean(1) / STEP


def test_prepared_copy_keeps_rows_and_frames_and_reads_fast_by_default(tmp_path):
    src = _index_dataset(tmp_path / "src")
    report = prepare.prepare_dataset(str(src), str(tmp_path / "out"), encode.EncodeSettings(short_side_px=32),
                                     use_ray=False, log=lambda _: None)
    assert (report.num_videos, report.num_prepared, report.num_skipped, report.bad) == (3, 3, 0, ())
    out = manifest.read_manifest(report.manifest)
    assert list(out["label"]) == [0, 1, 0] and list(out["split"]) == ["val", "train", "train"]
    assert list(out["num_frames"]) == [30, 30, 30] and out["video"][0] == "videos/v0.mkv.mp4"
    assert manifest.preferred_decoder(out) == "pyav"  # what `data.decoder=auto` then uses
    assert (tmp_path / "out" / "classes.txt").read_text() == "a\nb\n"
    path = tmp_path / "out" / out["video"][1]
    wanted = [29, 0, 13, 14, 7]
    frames = decode.read_frames(path, wanted, decoder="pyav")
    assert frames.shape == (5, 32, 42, 3)  # short side 32, aspect kept, even width
    np.testing.assert_allclose(_values(frames), wanted, atol=0.5)  # the same frames, up to the codec's loss
    # every frame is a keyframe: seeking decodes only the frames asked for
    import av

    with av.open(str(path)) as container:
        assert all(packet.is_keyframe for packet in container.demux(video=0) if packet.size)


def test_rerun_skips_finished_outputs_and_redoes_missing_ones(tmp_path):
    src = _index_dataset(tmp_path / "src")
    settings = encode.EncodeSettings(short_side_px=32, gop=4)
    prepare.prepare_dataset(str(src), str(tmp_path / "out"), settings, use_ray=False, log=lambda _: None)
    kept = tmp_path / "out" / "videos" / "v0.mkv.mp4"
    stamp = kept.stat().st_mtime_ns
    (tmp_path / "out" / "videos" / "v1.mkv.mp4").unlink()
    (tmp_path / "out" / "videos" / "v2.mkv.mp4.part").write_bytes(b"half an upload")  # a crash mid-write
    (tmp_path / "out" / "videos" / "v2.mkv.mp4").unlink()
    report = prepare.prepare_dataset(str(src), str(tmp_path / "out"), settings, use_ray=False, log=lambda _: None)
    assert (report.num_prepared, report.num_skipped) == (2, 1)
    assert kept.stat().st_mtime_ns == stamp
    assert list(manifest.read_manifest(report.manifest)["num_frames"]) == [30, 30, 30]


def test_bad_inputs_are_listed_by_name_and_reason_never_dropped_silently(tmp_path):
    src = _index_dataset(tmp_path / "src")
    good = (tmp_path / "src" / "videos" / "v1.mkv.mp4").read_bytes()
    (tmp_path / "src" / "videos" / "v1.mkv.mp4").write_bytes(good[:300])  # truncated
    df = manifest.read_manifest(src)
    df = pd.concat([df, pd.DataFrame([{"video": "../escape.mp4", "label": 0, "split": "train"},
                                      {"video": "videos/gone.mp4", "label": 1, "split": "train"}])])
    src.write_bytes(manifest.manifest_bytes(df.reset_index(drop=True)))
    lines = []
    report = prepare.prepare_dataset(str(src), str(tmp_path / "out"), encode.EncodeSettings(short_side_px=32),
                                     use_ray=False, log=lines.append)
    bad = dict(report.bad)
    assert set(bad) == {"videos/v1.mkv.mp4", "../escape.mp4", "videos/gone.mp4"}
    assert "escapes the data root" in bad["../escape.mp4"] and "does not exist" in bad["videos/gone.mp4"]
    assert "corrupt" in bad["videos/v1.mkv.mp4"]
    assert list(manifest.read_manifest(report.manifest)["video"]) == ["videos/v0.mkv.mp4", "videos/v2.mkv.mp4"]
    listed = (tmp_path / "out" / prepare.ERRORS_FILE).read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(bad)
    assert any("bad input ../escape.mp4" in line for line in lines)


def test_jpeg_frames_and_fps_resampling_feed_the_dataset(tmp_path):
    src = _index_dataset(tmp_path / "src", num_videos=2)
    report = prepare.prepare_dataset(
        str(src), str(tmp_path / "out"), encode.EncodeSettings(short_side_px=32, output_format="jpeg"),
        use_ray=False, log=lambda _: None)
    out = manifest.read_manifest(report.manifest)
    assert list(out["media"]) == ["frames", "frames"] and list(out["num_frames"]) == [30, 30]
    fmt = InputFormat(sampling="segments", num_frames=4, size_px=32, resize_px=32)
    ds = dataset.VideoClipDataset(df=out, fmt=fmt, root=str(tmp_path / "out"), num_classes=2, train=False)
    clip = ds[0]["clip"]  # (1, T, C, H, W)
    np.testing.assert_allclose(clip[0].float().mean((1, 2, 3)).numpy() / STEP, [3, 11, 18, 26], atol=0.6)
    # the source is 12 fps (synthetic.write_mp4's default): halving the rate keeps every other frame
    half = encode.encode_video(str(tmp_path / "src" / "videos" / "v0.mkv.mp4"), str(tmp_path / "half.mp4"),
                                 encode.EncodeSettings(short_side_px=32, fps=6))
    assert half == 15
    np.testing.assert_allclose(_values(decode.read_frames(tmp_path / "half.mp4", [0, 1, 14])), [0, 2, 28], atol=0.5)


def _colour_tagged(src, dst, colorspace: int, color_range: int) -> None:
    """`src` re-encoded nearly losslessly, its colours converted into `colorspace` and `color_range` and
    tagged so (as camera and YouTube files come: BT.709, or full range)."""
    import av

    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.options = {"crf": "4", "g": "8"}
        stream.codec_context.thread_count = 1
        stream.codec_context.colorspace, stream.codec_context.color_range = colorspace, color_range
        for frame in source.decode(video=0):
            for packet in stream.encode(frame.reformat(format="yuv420p", dst_colorspace=colorspace,
                                                       dst_color_range=color_range)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("colorspace, color_range", [(1, 1), (5, 2)], ids=["bt709", "bt601 full range"])
def test_a_prepared_copy_keeps_the_colours_of_a_bt709_or_full_range_source(tmp_path, colorspace, color_range):
    """The copy is BT.601 limited range and untagged, which is what FFmpeg and the YUV reader take an
    untagged stream for: the source's colours are converted, not relabelled. Against the source's RGB,
    a BT.601 source's copy measures mean |d| 3.25 and p99 14 levels (the codec's loss); relabelled, these
    sources measured 5.8-6.9 and 20-22, converted 3.4-3.7 and 14."""
    from actionlab.bench.data import make_kinetics_like

    make_kinetics_like(tmp_path / "camera.mp4", seed=3, width=128, height=96, fps=24, seconds=1, keyint=8,
                       bitrate=2_000_000)
    _colour_tagged(tmp_path / "camera.mp4", tmp_path / "tagged.mp4", colorspace, color_range)
    assert encode.encode_video(str(tmp_path / "tagged.mp4"), str(tmp_path / "copy.mp4"),
                               encode.EncodeSettings(short_side_px=0)) == 24
    source = decode.read_frames(tmp_path / "tagged.mp4", range(24), decoder="pyav").astype(np.float32)
    copy = decode.read_frames(tmp_path / "copy.mp4", range(24), decoder="pyav").astype(np.float32)
    diff = np.abs(copy - source)
    assert diff.mean() <= 4.5 and np.percentile(diff, 99) <= 17, (diff.mean(), np.percentile(diff, 99))
    planes, _ = decode.read_sampled(tmp_path / "copy.mp4", lambda n: np.arange(3), decoder="pyav", pixels="yuv420")
    assert not isinstance(planes, np.ndarray)  # the copy takes the YUV planes path


def test_settings_are_checked():
    with pytest.raises(ValueError, match="even size"):
        encode.EncodeSettings(short_side_px=255)
    with pytest.raises(ValueError, match="at least 1 frame"):
        encode.EncodeSettings(gop=0)
    assert encode.scaled_size(340, 256, 128) == (170, 128) and encode.scaled_size(1280, 720, 256) == (456, 256)


@pytest.mark.integration
@needs_netns
def test_data_prepare_command_runs_as_a_ray_data_job_and_resumes(tmp_path, ray_address):
    src = _index_dataset(tmp_path / "src", num_videos=4, num_frames=12)
    env = base_env(ACTIONLAB_HOME=str(tmp_path / "home"), RAY_ADDRESS=ray_address)
    command = [sys.executable, "-m", "actionlab", "data", "prepare", str(src), str(tmp_path / "out"),
               "--short-side", "32", "--json"]
    first = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "prepared 4/4 (100%)" in first.stdout and "ETA" in first.stdout
    os.unlink(tmp_path / "out" / "videos" / "v3.mkv.mp4")
    second = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    import json

    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert (summary["prepared"], summary["skipped_already_done"], summary["bad"]) == (1, 3, 0)
    assert list(manifest.read_manifest(tmp_path / "out" / "manifest.parquet")["num_frames"]) == [12] * 4


def _s3_objects(s3, bucket: str, prefix: str) -> dict:
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for o in listing.get("Contents", [])}


@needs_netns
def test_half_written_outputs_on_s3_are_redone_never_counted_as_done(s3, synth_dataset, tmp_path):
    """Done is a done record written after the output, whose size and settings still hold: an output
    without its record (a task killed between the two), a record whose output was cut short or
    replaced, and a record made with other settings are all redone."""
    from actionlab import storage

    bucket = s3.make_bucket("half-written")
    storage.upload_dir(synth_dataset.parent, f"{bucket}/raw")
    settings = encode.EncodeSettings(short_side_px=16)
    kwargs = dict(use_ray=False, cache_dir=str(tmp_path / "cache"), log=lambda _: None)
    args = (f"{bucket}/raw/manifest.parquet", f"{bucket}/prepared", settings)
    first = prepare.prepare_dataset(*args, **kwargs)
    assert (first.num_prepared, first.num_skipped) == (24, 0) and first.prepared_on == ()  # no Ray: no nodes
    videos = list(manifest.read_manifest(first.manifest)["video"])
    client = s3.client()

    def key(name):
        return f"prepared/{name}"

    def record_key(name):
        return f"prepared/{prepare.DONE_DIR}/{name}.json"

    whole = client.get_object(Bucket="half-written", Key=key(videos[0]))["Body"].read()
    record = json.loads(client.get_object(Bucket="half-written", Key=record_key(videos[0]))["Body"].read())
    assert (record["video"], record["num_frames"], record["bytes_out"]) == (videos[0], 8, len(whole))
    assert record["settings"] == dataclasses.asdict(settings)
    # 0: output cut short after its record was written; 1: output complete, record never written;
    # 2: a partial object and no record; 3: a record made with other settings
    client.put_object(Bucket="half-written", Key=key(videos[0]), Body=whole[: len(whole) // 2])
    client.delete_object(Bucket="half-written", Key=record_key(videos[1]))
    client.put_object(Bucket="half-written", Key=key(videos[2]), Body=whole[:300])
    client.delete_object(Bucket="half-written", Key=record_key(videos[2]))
    other = json.loads(client.get_object(Bucket="half-written", Key=record_key(videos[3]))["Body"].read())
    other["settings"]["crf"] = 30
    client.put_object(Bucket="half-written", Key=record_key(videos[3]), Body=json.dumps(other).encode())
    stamp = client.head_object(Bucket="half-written", Key=key(videos[5]))["LastModified"]

    again = prepare.prepare_dataset(*args, **kwargs)
    assert (again.num_prepared, again.num_skipped, again.bad) == (4, 20, ())
    assert client.head_object(Bucket="half-written", Key=key(videos[5]))["LastModified"] == stamp  # not redone
    for name in videos[:4]:
        local = storage.local_copy(f"{bucket}/prepared/{name}", tmp_path / "check")
        assert decode.read_frames(local, list(range(8)), decoder="pyav").shape == (8, 16, 16, 3)
        redone = json.loads(client.get_object(Bucket="half-written", Key=record_key(name))["Body"].read())
        assert redone["bytes_out"] == os.path.getsize(local) and redone["settings"]["crf"] == settings.crf


@needs_netns
def test_a_partial_jpeg_folder_on_s3_is_redone_without_stale_frames(s3, tmp_path):
    from actionlab import storage

    src = _index_dataset(tmp_path / "src", num_videos=2, num_frames=12)
    bucket = s3.make_bucket("partial-frames")
    storage.upload_dir(src.parent, f"{bucket}/raw")
    settings = encode.EncodeSettings(short_side_px=16, output_format="jpeg")
    kwargs = dict(use_ray=False, cache_dir=str(tmp_path / "cache"), log=lambda _: None)
    args = (f"{bucket}/raw/manifest.parquet", f"{bucket}/prepared", settings)
    prepare.prepare_dataset(*args, **kwargs)
    client = s3.client()
    # A node lost while uploading v1's frames: some frames there, one from an older copy, no record.
    client.delete_object(Bucket="partial-frames", Key=f"prepared/{prepare.DONE_DIR}/videos/v1.mkv.json")
    for i in range(6, 13):
        client.delete_object(Bucket="partial-frames", Key=f"prepared/videos/v1.mkv/{i:05d}.jpg")
    client.put_object(Bucket="partial-frames", Key="prepared/videos/v1.mkv/00099.jpg", Body=b"stale")
    report = prepare.prepare_dataset(*args, **kwargs)
    assert (report.num_prepared, report.num_skipped) == (1, 1)
    frames = _s3_objects(s3, "partial-frames", "prepared/videos/v1.mkv/")
    assert sorted(frames) == [f"prepared/videos/v1.mkv/{i:05d}.jpg" for i in range(1, 13)]
    assert list(manifest.read_manifest(report.manifest)["num_frames"]) == [12, 12]


@pytest.mark.integration
@needs_netns
def test_a_prepare_killed_mid_write_resumes_on_rerun_with_every_video_once(s3, tmp_path):
    """SIGKILL the command while it writes to S3, wherever that lands (mid-encode, mid-upload, between
    an output and its record); the rerun redoes exactly the videos without a record and skips the rest."""
    import signal
    import time

    synthetic.synthesize(tmp_path / "src", num_classes=4, videos_per_class=12, num_frames=24, size_px=64, seed=0,
                         num_procs=1)
    from actionlab import storage

    bucket = s3.make_bucket("killed-prepare")
    storage.upload_dir(tmp_path / "src", f"{bucket}/raw")
    env = base_env(ACTIONLAB_HOME=str(tmp_path / "home"), **s3.env)
    command = [sys.executable, "-m", "actionlab", "data", "prepare", f"{bucket}/raw/manifest.parquet",
               f"{bucket}/prepared", "--short-side", "32", "--no-ray", "--json"]
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    records = f"prepared/{prepare.DONE_DIR}/"
    try:
        deadline = time.monotonic() + 120
        while len(_s3_objects(s3, "killed-prepare", records)) < 10:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = {k[len(records):-len(".json")] for k in _s3_objects(s3, "killed-prepare", records)}
    assert 10 <= len(done) < 48, f"the kill did not land mid-job: {len(done)} of 48 done"
    assert not storage.exists(f"{bucket}/prepared/manifest.parquet")  # written only at the end
    rerun = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["prepared"], summary["skipped_already_done"], summary["bad"]) == (48 - len(done), len(done), 0)
    out = manifest.read_manifest(f"{bucket}/prepared/manifest.parquet")
    assert len(out) == 48 and out["video"].is_unique and list(out["num_frames"]) == [24] * 48
    outputs = {k: v for k, v in _s3_objects(s3, "killed-prepare", "prepared/videos/").items()}
    assert sorted(outputs) == sorted(f"prepared/{v}" for v in out["video"])  # nothing else, nothing partial
    for video in out["video"]:
        local = storage.local_copy(f"{bucket}/prepared/{video}", tmp_path / "check")
        assert decode.read_frames(local, [0, 23], decoder="pyav").shape == (2, 32, 32, 3)
