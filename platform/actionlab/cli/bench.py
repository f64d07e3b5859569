"""`actionlab flops` and `actionlab bench {model,data,train}`: what a workload costs and how fast the
model, the data path and the training loop run, each beside a baseline."""

from __future__ import annotations

import os
from pathlib import Path

from workloads.registry import SAMPLINGS

from .common import (add_command, add_model_set_option, add_set_option, frames_and_size,
                     model_overrides, print_result)

# `bench data` builds one-frame segments, so `snippets` (segments of `snippet_frames`) would measure
# `segments` again under another name.
BENCH_DATA_SAMPLINGS = [s for s in SAMPLINGS if s != "snippets"]


def add_parser(subparsers) -> None:
    """Adds `flops` and the `bench` group to the top-level subparsers."""
    sp = add_command(subparsers, "flops", run_flops, "GMACs and parameters of a workload, measured on the module")
    sp.add_argument("workload")
    sp.add_argument("--frames", type=int, default=8)
    sp.add_argument("--size", type=int, default=224)
    sp.add_argument("--num-classes", type=int, default=400)
    sp.add_argument("--json", action="store_true")
    add_model_set_option(sp)

    bench_sub = subparsers.add_parser(
        "bench", help="side-by-side benchmarks: model forward, data decoding, training vs a plain loop",
    ).add_subparsers(dest="bench_command", required=True)

    sp = bench_sub.add_parser("data", help="decode + transform clips/s per core for each decoder and prepared copy")
    sp.set_defaults(fn=run_bench_data)
    sp.add_argument("manifest", nargs="?", help="your manifest (default: make Kinetics-like files and the "
                    "`data prepare` curve: keyframe interval vs size vs speed)")
    sp.add_argument("--decoders", help="comma-separated, e.g. decord,pyav (default: every one installed)")
    sp.add_argument("--videos", type=int, default=6, help="Kinetics-like videos to make (without a manifest)")
    sp.add_argument("--work-dir", help="where to make them (default: a temp folder)")
    sp.add_argument("--frames", type=int, default=8)
    sp.add_argument("--sampling", default="segments", choices=BENCH_DATA_SAMPLINGS)
    sp.add_argument("--size", type=int, default=224)
    sp.add_argument("--clips", type=int, default=6, help="clips per round and row")
    sp.add_argument("--rounds", type=int, default=3)
    sp.add_argument("--gpu-clips-per-s", type=float, default=1500.0,
                    help="what one GPU consumes, for the cores-per-GPU column")
    sp.add_argument("--json", action="store_true")

    sp = bench_sub.add_parser("train", help="actionlab's Ray Train path beside a plain PyTorch loop, same "
                              "everything; or what the input pipeline delivers to a Train worker")
    sp.set_defaults(fn=run_bench_train)
    sp.add_argument("recipe", help="recipe YAML path/URI or shipped recipe name")
    sp.add_argument("--vs-plain", action="store_true", help="compare with a plain PyTorch loop")
    sp.add_argument("--data-only", action="store_true",
                    help="clips/s the whole input pipeline delivers to each Train worker as pinned batches (no "
                         "model), beside bench data's bare decode rate of the same files; the step's own rate; "
                         "where data.engine=ray decoded (see data.decode_nodes)")
    sp.add_argument("--json", action="store_true")
    add_set_option(sp)

    sp = bench_sub.add_parser("model", help="forward clips/s of a workload across settings, beside a baseline")
    sp.set_defaults(fn=run_bench_model)
    sp.add_argument("workload")
    sp.add_argument("--sweep", help="PARAM=V1,V2,...: one row per value, the first is the baseline")
    sp.add_argument("--tiny", action="store_true", help="start from the workload's tiny CPU params")
    sp.add_argument("--frames", type=int, default=8)
    sp.add_argument("--size", type=int, default=224)
    sp.add_argument("--num-classes", type=int, default=400)
    sp.add_argument("--batch-size", type=int, default=2)
    sp.add_argument("--iters", type=int, default=5)
    sp.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    sp.add_argument("--train", action="store_true", help="time a training step and report MFU (GPU)")
    sp.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    sp.add_argument("--no-amp", action="store_true", help="no bf16 autocast on the GPU")
    sp.add_argument("--channels-last", action="store_true", help="channels-last weights and clips")
    sp.add_argument("--compile", action="store_true", help="torch.compile the model")
    sp.add_argument("--json", action="store_true")
    add_model_set_option(sp)


def run_flops(args) -> int:
    """`actionlab flops WORKLOAD`: `flops.workload_compute`, and the workload's `compute_by_ratio` table."""
    from workloads import get_workload

    from ..flops import workload_compute

    cfg, params = model_overrides(args.workload, args.set)
    frames, size = frames_and_size(args, cfg, args.set)
    compute = workload_compute(args.workload, num_frames=frames, size_px=size, num_classes=args.num_classes,
                               params=params)
    info = {"workload": args.workload, "frames": frames, "size_px": size,
            "gmacs": round(compute.gmacs, 3), "params": compute.params}
    spec = get_workload(args.workload)
    report = []
    if spec.compute_by_ratio is not None:
        report = spec.compute_by_ratio(params, num_frames=frames, size_px=size, num_classes=args.num_classes)
        info["by_ratio"] = report
    if args.json:
        print_result(info, True)
        return 0
    print(f"{args.workload} {frames}x{size}px: {compute.gmacs:.2f} GMACs, {compute.params / 1e6:.2f} M params")
    if report:
        print("  data-dependent: the line above is one forward of the untrained model; by selection ratio "
              "(exactly round(rt x frames) frames kept in every block, * = the --set value):")
    for row in report:
        paper = f"   paper {row['paper_gmacs']}" if row.get("paper_gmacs") is not None else ""
        mark = "*" if row.get("configured") else " "
        print(f" {mark}rt {row['rt']:<5g} frames kept {row['kept_frames']:>2d}: expected {row['expected_gmacs']:.2f}, "
              f"measured {row['measured_gmacs']:.2f} GMACs{paper}")
    return 0


def run_bench_model(args) -> int:
    """`actionlab bench model WORKLOAD`: `bench.model.bench`, one row per setting."""
    import torch
    from workloads import get_workload

    from ..bench.model import bench, parse_sweep

    tiny = dict(get_workload(args.workload).tiny) if args.tiny else {}
    cfg, params = model_overrides(args.workload, args.set, params=tiny)
    args.frames, args.size = frames_and_size(args, cfg, args.set)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = bench(args.workload, params=params, sweep=parse_sweep(args.sweep) if args.sweep else None,
                 num_frames=args.frames, size_px=args.size, num_classes=args.num_classes,
                 batch_size=args.batch_size, iters=args.iters, threads=args.threads, train=args.train,
                 device=device, amp=not args.no_amp, channels_last=args.channels_last, compile=args.compile)
    if args.json:
        print_result([row.__dict__ for row in rows], True)
        return 0
    what = "training step (fwd+bwd+AdamW)" if args.train else "forward"
    extras = [x for x, on in (("bf16", device == "cuda" and not args.no_amp), ("channels_last", args.channels_last),
                              ("torch.compile", args.compile)) if on]
    print(f"{args.workload} {what} on {device}, batch {args.batch_size} x {args.frames} frames x {args.size}px, "
          f"{torch.get_num_threads()} threads {' '.join(extras)}; baseline = first row")
    print(f"  {'setting':24s} {'clips/s':>9s} {'ms/batch':>9s} {'GMACs/clip':>11s} {'vs baseline':>11s} {'MFU':>6s}")
    for r in rows:
        mfu = f"{r.mfu:6.1%}" if r.mfu is not None else f"{'-':>6s}"
        print(f"  {r.setting:24s} {r.clips_per_s:9.2f} {r.ms_per_batch:9.1f} {r.gmacs:11.3f} {r.speedup:10.2f}x {mfu}")
    return 0


def run_bench_data(args) -> int:
    """`actionlab bench data [MANIFEST]`: `bench.data.bench_data` on the manifest, or on the prepare curve."""
    import tempfile

    from ..bench import data as bench_data
    from ..data import manifest as data_manifest
    from ..data import profile

    decoders = [d.strip() for d in args.decoders.split(",") if d.strip()] if args.decoders else \
        bench_data.available_decoders()
    if args.manifest:
        df = data_manifest.read_manifest(args.manifest)
        frames = "media" in df.columns and (df["media"] == "frames").all()
        sets = bench_data.reader_sets(Path(args.manifest).parent.name, args.manifest, decoders, frames=frames)
        work = None
    else:
        work = args.work_dir or tempfile.mkdtemp(prefix="actionlab-bench-data-")
        print(f"no manifest given: making {args.videos} Kinetics-like videos and prepared copies in {work}")
        sets = bench_data.make_curve_sets(work, num_videos=args.videos, decoders=decoders)
    rows = bench_data.bench_data(sets, num_frames=args.frames, size_px=args.size, sampling=args.sampling,
                                 clips_per_round=args.clips, rounds=args.rounds,
                                 gpu_clips_per_s=args.gpu_clips_per_s)
    fidelity = {}
    if work is not None:
        raw = sets[0].manifest
        fidelity = {d.manifest: bench_data.frame_fidelity(raw, d.manifest) for d in sets if d.manifest != raw}
    if args.json:
        print_result([{**r.__dict__, "psnr_db": fidelity.get(d.manifest)} for r, d in zip(rows, sets)], True)
        return 0
    load = os.getloadavg()[0]
    print(f"decode + transform + collate, {args.frames} frames ({args.sampling}) at {args.size}px, one core, a new "
          f"reader per clip; median of {args.rounds} interleaved rounds of {args.clips} clips; baseline = first row; "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"  {'data':22s} {'reader':18s} {'clips/s/core':>12s} {'ms/clip':>8s} {'MB/video':>9s} {'PSNR dB':>8s} "
          f"{'vs base':>8s} {'cores/GPU':>10s} {'+CPU norm':>10s}")
    for r, d in zip(rows, sets):
        psnr = f"{fidelity[d.manifest]:8.1f}" if d.manifest in fidelity else f"{'-':>8s}"
        print(f"  {r.name:22s} {_reader(r):18s} {r.clips_per_core_s:12.1f} {r.ms_per_clip:8.1f} {r.mb_per_video:9.2f} "
              f"{psnr} {r.speedup:7.2f}x {r.cores_per_gpu:10.1f} {r.clips_per_core_s_cpu_normalise:10.1f}")
    print(f"cores/GPU = CPU cores needed to feed one GPU consuming {args.gpu_clips_per_s:g} clips/s "
          f"({'measured, --gpu-clips-per-s' if args.gpu_clips_per_s != bench_data.GPU_CLIPS_PER_S else 'built-in: an H100 on TSM-R50 8f at ~30% MFU'}), "
          "the GPU converting and normalising the batches; +CPU norm = clips/s per core when this CPU does that too; "
          "PSNR is against the raw file's frames")
    for line in bench_data.codec_shares(rows):
        print(line)
    print("per-stage profile, CPU ms per clip of the reading thread (decord's decode includes its RGB conversion, "
          "and decord decodes on threads of its own: their CPU time lands in `other`; normalise = the batch's "
          "colour conversion + normalisation on this CPU (for `yuv420 crop`, the resize too: data.resize_on=device "
          "runs it on the GPU), outside clips/s/core):")
    print(f"  {'data':22s} {'reader':18s} " + " ".join(f"{s:>9s}" for s in profile.STAGES) + f" {'other':>9s}")
    for r in rows:
        inside = sum(v for k, v in r.stages_ms.items() if k != "normalise")
        print(f"  {r.name:22s} {_reader(r):18s} " + " ".join(f"{r.stages_ms[s]:9.2f}" for s in profile.STAGES)
              + f" {max(0.0, r.ms_per_clip - inside):9.2f}")
    return 0


def _reader(row) -> str:
    return f"jpeg {row.jpeg}" if row.jpeg else f"{row.decoder} {row.pixels}"


def run_bench_train(args) -> int:
    """`actionlab bench train RECIPE`: `bench.train.bench_train` (`--vs-plain`) or `data_only_run` (`--data-only`)."""
    from ..bench.train import bench_train, loader_startup
    from ..config import load_recipe, resolve

    if args.vs_plain == args.data_only:
        raise ValueError("bench train needs one of --vs-plain (beside a plain PyTorch loop) or --data-only "
                         "(the clips/s the input pipeline delivers to each Train worker, no model)")
    cfg = resolve(load_recipe(args.recipe), args.set)
    if args.data_only:
        return _bench_data_only(cfg, as_json=args.json)
    starts = loader_startup(cfg) if cfg.data.num_loader_workers else []  # first: no fork server runs yet
    plain, ray_side = bench_train(cfg)
    ratio = plain.steady_clips_per_s / max(1e-9, ray_side.steady_clips_per_s)
    if args.json:
        print_result({"plain": {**plain.__dict__, "steady_clips_per_s": plain.steady_clips_per_s},
                      "ray": {**ray_side.__dict__, "steady_clips_per_s": ray_side.steady_clips_per_s},
                      "plain_over_ray_steady": ratio, "extra_wall_s": ray_side.wall_s - plain.wall_s,
                      "loader_start": [s.__dict__ for s in starts]}, True)
        return 0
    print(f"{cfg.workload.name}, {cfg.schedule.epochs} epochs; steady = median clips/s of epochs 2..N (training)")
    print(f"  {'':24s} {'steady clips/s':>14s} {'wall s':>8s}  train/loss by epoch")
    for side in (plain, ray_side):
        losses = " ".join(f"{v:.4f}" for v in side.losses)
        print(f"  {side.name:24s} {side.steady_clips_per_s:14.2f} {side.wall_s:8.1f}  {losses}")
    print(f"plain / Ray steady throughput: {ratio:.3f}x; the Ray path takes {ray_side.wall_s - plain.wall_s:+.1f} s "
          "more wall time:")
    for side in (plain, ray_side):
        other = side.wall_s - side.epochs_s - side.ray_start_s
        print(f"  {side.name:24s} Ray start {side.ray_start_s:6.1f} s, epochs (train + val) {side.epochs_s:7.1f} s, "
              f"everything else {other:6.1f} s")
    print("  (everything else: building the model and data, and on Ray the Train controller and worker start-up, "
          "the per-epoch checkpoints and MLflow writes)")
    if starts:
        print(f"loader start-up, {cfg.data.num_loader_workers} workers: seconds to each epoch's first batch "
              "(and to its last)")
        for s in starts:
            by_epoch = ", ".join(f"epoch {i + 1} {f:.2f} s ({t:.2f} s)"
                                 for i, (f, t) in enumerate(zip(s.first_batch_s, s.epoch_s)))
            print(f"  {s.name:26s} {by_epoch}")
    return 0


def _bench_data_only(cfg, *, as_json: bool) -> int:
    from ..bench.train import data_only_run, loader_cores
    from ..train.inputs import pixels_for

    out = data_only_run(cfg)
    if as_json:
        print_result({**out.__dict__, "steady_clips_per_s": out.steady_clips_per_s,
                      "bare_clips_per_core_s": out.bare_clips_per_core_s}, True)
        return 0
    cores_here = os.cpu_count() or 1
    workers = cfg.data.num_loader_workers
    where = f"decode_nodes={cfg.data.decode_nodes}" if cfg.data.engine == "ray" else \
        f"{workers} loader workers on {cores_here} cores"
    print(f"{cfg.workload.name}: clips/s delivered to each of {cfg.compute.num_workers} Train worker(s) by "
          f"data.engine={cfg.data.engine} ({where}), data.pixels={cfg.data.pixels} ({pixels_for(cfg)} here), as "
          f"{'pinned' if out.pinned else 'unpinned (no GPU)'} {out.batches} batches, no model; steady = median of "
          "epochs 2..N; "
          f"load average {out.load_average:.1f}")
    print(f"  delivered clips/s by epoch: {' '.join(f'{r:.1f}' for r in out.clips_per_s)}; steady "
          f"{out.steady_clips_per_s:.1f}")
    rounds = f"median of {len(out.bare_rounds)} rounds, {min(out.bare_rounds):.1f}-{max(out.bare_rounds):.1f}"
    print(f"  bare decode rate (bench data's measure, same files and settings): {out.bare_clips_per_core_s:.1f} "
          f"clips/s per core ({rounds})")
    if out.delivered_share is not None:
        cores = loader_cores(workers)
        epochs = "epochs 2..N" if len(out.clips_per_s) > 1 else "the one epoch"
        print(f"  delivered / (bare x {cores} worker cores) = {out.delivered_share:.0%}: median of {epochs}, each "
              "against the bare rounds taken just before and after it (goal: >= 90% with one loader worker per core"
              f"{'' if workers == cores_here else f'; this run has {workers} workers on {cores_here} cores'})")
    print(f"  training step alone on such a batch: {out.step_clips_per_s:.1f} clips/s "
          "(delivering faster than this gains nothing)")
    print(f"  Train worker node(s): {', '.join(out.train_nodes)}")
    if out.clips_per_node:
        labelled = {n["name"] for n in out.nodes if n["decode_label"]}
        print("  clips decoded per node: " + ", ".join(
            f"{name}{' (decode label)' if name in labelled else ''} {count}"
            for name, count in out.clips_per_node.items()))
    if out.nodes:
        print(f"  cluster: {len(out.nodes)} nodes, {sum(n['cpus'] for n in out.nodes):g} CPUs")
    print(f"  wall {out.wall_s:.1f} s")
    return 0

