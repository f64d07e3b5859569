"""`actionlab data {synth,index,prepare,upload,check}`: making, converting, re-encoding, uploading and
checking datasets."""

from __future__ import annotations

import time
from pathlib import Path

from ..data.encode import OUTPUT_FORMATS
from ..data.manifest import FORMATS, SUBSETS
from .common import print_result


def add_parser(subparsers) -> None:
    """Adds the `data` group to the top-level subparsers."""
    data = subparsers.add_parser("data", help="datasets: synth, index, prepare, check, upload").add_subparsers(
        dest="data_command", required=True)
    sp = data.add_parser("synth", help="render the motion dataset as H.264 MP4 files")
    sp.set_defaults(fn=run_synth)
    sp.add_argument("out")
    sp.add_argument("--num-classes", type=int, default=6)
    sp.add_argument("--videos-per-class", type=int, default=48)
    sp.add_argument("--frames", type=int, default=16)
    sp.add_argument("--size", type=int, default=64)
    sp.add_argument("--seed", type=int, default=0)

    sp = data.add_parser("index", help="convert IBM / TSN / mmaction2 annotation files to a manifest")
    sp.set_defaults(fn=run_index)
    sp.add_argument("annotations")
    sp.add_argument("--format", required=True, choices=FORMATS)
    sp.add_argument("--root", required=True, help="folder or URI the annotation paths are relative to; recorded in the "
                    "manifest as the default root of every later command")
    sp.add_argument("--classes", required=True, help="class-name list, one per line")
    sp.add_argument("-o", "--output", required=True, help="manifest.parquet to write")
    sp.add_argument("--subset", choices=list(SUBSETS),
                    help="keep only the classes of the IBM study's published subset, labels renumbered")

    sp = data.add_parser("prepare", help="re-encode a dataset for fast sampled decoding (a Ray Data job)")
    sp.set_defaults(fn=run_prepare)
    sp.add_argument("manifest", help="source manifest.parquet (path or URI)")
    sp.add_argument("out", help="output dataset folder or s3:// prefix (manifest.parquet, classes.txt, videos)")
    sp.add_argument("--root", help="source data root (default: the one `data index` recorded in the manifest, else its folder)")
    sp.add_argument("--short-side", type=int, default=256, help="short side in px (0 keeps the size)")
    keys = sp.add_mutually_exclusive_group()
    keys.add_argument("--gop", type=int, default=1, help="keyframe interval in frames (default 1: all intra)")
    keys.add_argument("--intra", action="store_true", help="every frame a keyframe (the default; same as --gop 1)")
    sp.add_argument("--fps", type=float, default=0.0, help="resample to this frame rate (default: keep every frame)")
    sp.add_argument("--crf", type=int, default=17, help="x264 quality (lower = larger, closer to the source)")
    sp.add_argument("--preset", default="veryfast", help="x264 preset (encoding speed)")
    sp.add_argument("--no-fastdecode", action="store_true", help="keep CABAC and deblocking (smaller, slower to read)")
    sp.add_argument("--format", default="mp4", choices=OUTPUT_FORMATS, help="H.264 MP4, or JPEG frame folders")
    sp.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs Ray reserves per video")
    sp.add_argument("--no-ray", action="store_true", help="run in this process instead of a Ray Data job")
    sp.add_argument("--shared-fs", action="store_true",
                    help="local --root and OUT are on a file system every node mounts at the same path (NFS, FSx); "
                         "without it a Ray cluster of several nodes refuses them")
    sp.add_argument("--json", action="store_true")

    sp = data.add_parser("upload", help="copy a dataset folder to s3://bucket/prefix as it is (rewrites nothing)")
    sp.set_defaults(fn=run_upload)
    sp.add_argument("local_dir", help="dataset folder (manifest.parquet, classes.txt, videos/)")
    sp.add_argument("uri", help="destination, e.g. s3://bucket/datasets/motion (the bucket must exist)")
    sp.add_argument("--threads", type=int, default=8, help="parallel uploads")

    sp = data.add_parser("check", help="pre-flight: open every video, list the bad ones and what to fix")
    sp.set_defaults(fn=run_check)
    sp.add_argument("manifest")
    sp.add_argument("--root")
    sp.add_argument("--bad-list", help="write the bad files as CSV here")


def run_synth(args) -> int:
    """`actionlab data synth OUT`: `data.synthetic.synthesize`."""
    from ..data.synthetic import synthesize

    start = time.perf_counter()
    manifest = synthesize(
        args.out,
        num_classes=args.num_classes,
        videos_per_class=args.videos_per_class,
        num_frames=args.frames,
        size_px=args.size,
        seed=args.seed,
    )
    print(f"wrote {manifest} ({args.num_classes} classes x {args.videos_per_class} videos) in "
          f"{time.perf_counter() - start:.1f}s")
    return 0


def run_index(args) -> int:
    """`actionlab data index ANNOTATIONS`: `data.manifest.index_annotations`."""
    from ..data.manifest import index_annotations

    report = index_annotations(
        args.annotations, fmt=args.format, root=args.root, classes_uri=args.classes, out_uri=args.output,
        subset=args.subset,
    )
    print(report.summary() if hasattr(report, "summary") else report)
    return 0


def run_check(args) -> int:
    """`actionlab data check MANIFEST`: `data.check.check_manifest`; exit 1 when a video is bad."""
    from ..data.check import check_manifest

    report = check_manifest(args.manifest, root=args.root, out_bad_list=args.bad_list)
    print(report.summary())
    return 1 if report.num_bad else 0


def run_prepare(args) -> int:
    """`actionlab data prepare MANIFEST OUT`: `data.prepare.prepare_dataset`; exit 1 when an input is bad."""
    from .. import storage
    from ..data import encode, prepare

    settings = encode.EncodeSettings(
        short_side_px=args.short_side, gop=1 if args.intra else args.gop, fps=args.fps, crf=args.crf,
        preset=args.preset, fast_decode=not args.no_fastdecode, output_format=args.format,
    )
    report = prepare.prepare_dataset(args.manifest, args.out, settings, root=args.root or "",
                                     num_cpus_per_task=args.cpus_per_task, use_ray=not args.no_ray,
                                     shared_fs=args.shared_fs)
    summary = report.summary()
    if args.json:
        print_result(summary, True)
    else:
        ratio = report.bytes_out / report.bytes_in if report.bytes_in else float("nan")
        print(f"prepared {report.num_prepared} videos, {report.num_skipped} already done, {len(report.bad)} bad, "
              f"in {report.seconds:.0f}s; size {report.bytes_in / 1e6:.1f} MB -> {report.bytes_out / 1e6:.1f} MB "
              f"({ratio:.2f}x) for the videos prepared in this run")
        if report.prepared_on:
            print("prepared on: " + ", ".join(f"{node} {count}" for node, count in report.prepared_on))
        if report.bad:
            print(f"bad inputs are listed in {storage.redact(storage.join(args.out, prepare.ERRORS_FILE))}")
        print(f"train with:  --set data.manifest={storage.redact(report.manifest)}")
    return 1 if report.bad else 0


def run_upload(args) -> int:
    """`actionlab data upload LOCAL_DIR URI`: `storage.upload_dir`."""
    from .. import storage

    start = time.perf_counter()
    num_files, num_bytes = storage.upload_dir(args.local_dir, args.uri, num_threads=args.threads)
    target = storage.redact(args.uri)
    print(f"uploaded {num_files} files ({num_bytes / 1e6:.1f} MB) to {target} in {time.perf_counter() - start:.1f}s")
    if (Path(args.local_dir) / "manifest.parquet").is_file():
        print(f"train with:  --set data.manifest={storage.join(target, 'manifest.parquet')}")
    return 0
