"""`actionlab ...`: the command line. Each subcommand is a thin layer over a library function."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path


def _print(obj, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, default=str))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            print(f"{key}: {value}")
    else:
        print(obj)


# --- subcommands ---------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from .config import load_recipe, resolve
    from .train.launch import train

    cfg = resolve(load_recipe(args.recipe), args.set)
    outcome = train(cfg, register_name=args.register or "")
    _print(outcome.summary(), args.json)
    return 0


def cmd_tune(args) -> int:
    from .tune.space import load_sweep
    from .tune.sweep import sweep

    spec = load_sweep(args.space, overrides=args.set)
    outcome = sweep(spec, register_name=args.register or "")
    if args.json:
        print(json.dumps(outcome.summary(), default=str))
        return 0
    metric = spec.metric
    print(f"sweep '{outcome.name}' (MLflow parent run {outcome.parent_run_id}):")
    for row in outcome.table:
        mark = "*" if row["trial_id"] in outcome.front else " "
        cfg = " ".join(f"{k.removeprefix('config/')}={v:.4g}" if isinstance(v, float) else f"{k.removeprefix('config/')}={v}"
                       for k, v in row.items() if k.startswith("config/"))
        print(f" {mark} {row['trial_id']:>12s} {row['status']:>13s} epochs {row['epochs']:>3d} "
              f"{metric} {row.get(metric, float('nan')):.4f} GMACs {row.get('gmacs') or float('nan'):.3f}  {cfg}")
    if outcome.best:
        print(f"best: {outcome.best['trial_id']} {metric} {outcome.best[metric]:.4f} (* = on the accuracy/GMACs front)")
    if outcome.registered:
        print(f"registered {outcome.registered['name']} v{outcome.registered['version']}")
    return 0


def cmd_register(args) -> int:
    from . import tracking

    info = tracking.register(args.run_id, args.name, alias=args.alias)
    _print(info, args.json)
    return 0


def cmd_predict(args) -> int:
    from .models.predict import predict

    results = predict(args.model, args.videos, top_k=args.top_k)
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['video']}: ERROR {r['error']}")
                continue
            top = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
            print(f"{r['video']}: {top}")
    return 1 if any("error" in r for r in results) else 0


def cmd_serve(args) -> int:
    from .models.serve import serve_forever

    serve_forever(args.model, host=args.host, port=args.port, replicas=args.replicas, num_cpus=args.num_cpus,
                  num_gpus=args.num_gpus, poll_s=args.poll_s, max_batch_size=args.max_batch_size,
                  batch_wait_s=args.batch_wait_ms / 1000, top_k=args.top_k)
    return 0


def cmd_serve_load(args) -> int:
    from .models.serve import load_test

    print(json.dumps(load_test(args.url, args.videos, requests=args.requests, concurrency=args.concurrency)))
    return 0


def cmd_list(args) -> int:
    from workloads import get_workload, list_workloads

    from .config import shipped_recipes

    if args.recipes:
        return _list_recipes(args)
    try:
        import tune_spaces

        spaces = tune_spaces.list_spaces()
    except (ImportError, AttributeError):
        spaces = []
    listing = {
        "workloads": {n: f"[{get_workload(n).input_for().sampling}] {get_workload(n).summary}" for n in list_workloads()},
        "recipes": shipped_recipes(),
        "spaces": spaces,
    }
    if args.json:
        print(json.dumps(listing))
        return 0
    print("workloads:")
    for name, text in listing["workloads"].items():
        print(f"  {name:10s} {text}")
    print("recipes:  " + " ".join(listing["recipes"]) + "   (`actionlab list --recipes`: the papers' tables)")
    print("spaces:   " + (" ".join(listing["spaces"]) or "-"))
    return 0


def recipe_rows(*, measure: bool = False) -> list[dict]:
    """One row per shipped recipe with a `paper:` block: its table, protocol and the paper's numbers;
    with `measure`, the GMACs of the model it builds (counted on the module, no weights loaded)."""
    from .config import read_recipe, resolve, shipped_recipes
    from .flops import recipe_gmacs

    rows = []
    for name in shipped_recipes():
        recipe = read_recipe(name)
        if recipe.paper is None:
            continue
        cfg = resolve(recipe.values)
        paper = recipe.paper
        rows.append({
            "recipe": name, "source": paper.source, "workload": cfg.workload.name, "dataset": paper.dataset,
            "frames": cfg.clip.num_frames, "stride": cfg.clip.stride,
            "views": f"{cfg.eval.num_clips}x{cfg.eval.num_crops}", "paper_views": paper.views,
            "paper_top1": paper.top1, "paper_top5": paper.top5, "paper_gflops": paper.gflops, "note": paper.note,
            "gflops_note": paper.gflops_note,
            "gmacs": round(recipe_gmacs(cfg), 2) if measure else None,
        })
    return rows


def _list_recipes(args) -> int:
    from .config import not_runnable_rows

    rows = recipe_rows(measure=args.gmacs)
    skipped = not_runnable_rows()
    if args.json:
        print(json.dumps({"recipes": rows, "not_runnable": skipped}))
        return 0

    def num(value, width):
        return f"{value:>{width}.1f}" if value is not None else f"{'-':>{width}s}"

    by_source: dict[str, list] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    width = max([len(r["recipe"]) for r in rows] + [6])
    for source in sorted(by_source):
        print(f"{source}")
        print(f"  {'recipe':{width}s} {'workload':9s} {'dataset':13s} {'frames x views':>14s} {'paper top-1':>11s} "
              f"{'paper GFLOPs':>12s} {'GMACs':>7s}")
        for r in by_source[source]:
            shape = f"{r['frames']} x {r['views']}"
            print(f"  {r['recipe']:{width}s} {r['workload']:9s} {r['dataset']:13s} {shape:>14s} "
                  f"{num(r['paper_top1'], 11)} {num(r['paper_gflops'], 12)} {num(r['gmacs'], 7)}")
    if not args.gmacs:
        print("GMACs: add --gmacs to count each recipe's model (no weights; minutes on 2 cores)")
    if skipped:
        print("not runnable (no recipe):")
        for row in skipped:
            print(f"  {row['source']}: {row['row']}: {row['why']}")
    return 0


def _workload_overrides(workload: str, sets: list[str], *, params: dict | None = None):
    """`--set` for commands that build one workload: dotted config keys as in `train`
    (`workload.params.rt=0.4`, `clip.num_frames=12`) or bare workload params as a shorthand (`rt=0.4`).
    Returns the resolved Config and the workload params given (`params` + `--set`). Keys that do not
    change the model raise, naming the ones that do."""
    from .config import Config, ConfigError, _merge, parse_override, resolve

    sections = {f.name for f in dataclasses.fields(Config)}
    dotted = []
    for text in sets:
        key = text.split("=", 1)[0].strip()
        dotted.append(text if key.split(".")[0] in sections else f"workload.params.{text.strip()}")
    for text in dotted:
        key = text.split("=", 1)[0].strip()
        if key == "workload.name":
            raise ConfigError(f"--set {text!r}: name the workload as the command's first argument instead")
        if not (key.startswith("workload.params.") or key in ("clip.num_frames", "clip.size_px")):
            raise ConfigError(f"--set {text!r} does not change the model; this command takes workload params "
                              "(workload.params.KEY=VALUE, or KEY=VALUE for short), clip.num_frames and clip.size_px")
    given: dict = {"workload": {"params": dict(params or {})}}
    for text in dotted:
        given = _merge(given, parse_override(text))
    return resolve({"workload": {"name": workload, "params": dict(params or {})}}, dotted), given["workload"]["params"]


def _frames_and_size(args, cfg, sets) -> tuple[int, int]:
    given = {text.split("=", 1)[0].strip() for text in sets}
    frames = cfg.clip.num_frames if "clip.num_frames" in given else args.frames
    size = cfg.clip.size_px if "clip.size_px" in given else args.size
    return frames, size


def cmd_flops(args) -> int:
    from workloads import get_workload

    from .flops import workload_compute

    cfg, params = _workload_overrides(args.workload, args.set)
    frames, size = _frames_and_size(args, cfg, args.set)
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
        print(json.dumps(info))
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


def cmd_weights_import(args) -> int:
    """Official checkpoint -> model dir (+ registry version); see `actionlab.weights`."""
    from pathlib import Path

    from .models import weights
    from .config import parse_override

    params: dict = {}
    for text in args.set:
        params.update(parse_override(text))
    classes = None
    if args.classes:
        classes = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
    out = weights.import_checkpoint(args.workload, args.checkpoint, args.output, num_classes=args.num_classes,
                                    num_frames=args.frames, params=params, class_names=classes, size_px=args.size)
    print(f"wrote {out} ({args.workload}, {args.num_classes} classes, {args.frames} frames)")
    if args.register:
        entry = weights.zoo_by_name(args.zoo) if args.zoo else weights.zoo_entry(args.checkpoint)
        info = weights.register_import(out, args.register, workload=args.workload,
                                       dataset=args.dataset or (entry.dataset if entry else ""),
                                       paper_top1=entry.paper_top1 if entry else "")
        print(f"registered {info['name']} v{info['version']} (source=official, paper top-1 "
              f"{info['tags']['paper_top1'] or 'unknown: not a known release file; name its zoo row with --zoo'})")
    return 0


def cmd_weights_zoo(args) -> int:
    from .models import weights

    for z in weights.ZOO:
        print(f"{z.name:28s} {z.dataset:24s} top-1 {z.paper_top1 or 'n/a':>6s}  {z.command()}")
    return 0


def cmd_eval(args) -> int:
    from .train.evaluate import evaluate_models

    summary = evaluate_models(args.model, args.data, split=args.split, root=args.root or "", num_clips=args.clips,
                              num_crops=args.crops, fusion=args.fusion, run_id=args.run or "")
    if args.json:
        print(json.dumps(summary))
        return 0
    protocol = f"{args.clips}x{args.crops}"
    for i, member in enumerate(summary.get("members", []), 1):
        print(f"{member['model']} ({member['num_frames']} x {member['sampling']}) on {member['num_videos']} videos: "
              f"top-1 {member[f'test/member{i}/top1_{protocol}']:.4f}, "
              f"top-5 {member[f'test/member{i}/top5_{protocol}']:.4f}, {member['bad_samples']} bad samples skipped")
    prefix = "test/ensemble/" if "members" in summary else "test/"
    name = "ensemble" if "members" in summary else summary["model"]
    print(f"{name} on {summary['num_videos']} videos ({summary['protocol']}): "
          f"top-1 {summary[f'{prefix}top1_{protocol}']:.4f}, top-5 {summary[f'{prefix}top5_{protocol}']:.4f}, "
          f"{summary['bad_samples']} bad samples skipped")
    for name, acc in summary["per_class"].items():
        print(f"  {name:30s} {acc:.3f}")
    return 0


def cmd_bench(args) -> int:
    from workloads import get_workload

    from .bench.model import bench, parse_sweep

    tiny = dict(get_workload(args.workload).tiny) if args.tiny else {}
    cfg, params = _workload_overrides(args.workload, args.set, params=tiny)
    args.frames, args.size = _frames_and_size(args, cfg, args.set)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = bench(args.workload, params=params, sweep=parse_sweep(args.sweep) if args.sweep else None,
                 num_frames=args.frames, size_px=args.size, num_classes=args.num_classes,
                 batch_size=args.batch_size, iters=args.iters, threads=args.threads, train=args.train,
                 device=device, amp=not args.no_amp, channels_last=args.channels_last, compile=args.compile)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows]))
        return 0
    what = "training step (fwd+bwd+AdamW)" if args.train else "forward"
    extras = [x for x, on in (("bf16", device == "cuda" and not args.no_amp), ("channels_last", args.channels_last),
                              ("torch.compile", args.compile)) if on]
    print(f"{args.workload} {what} on {device}, batch {args.batch_size} x {args.frames} frames x {args.size}px, "
          f"{torch_threads()} threads {' '.join(extras)}; baseline = first row")
    print(f"  {'setting':24s} {'clips/s':>9s} {'ms/batch':>9s} {'GMACs/clip':>11s} {'vs baseline':>11s} {'MFU':>6s}")
    for r in rows:
        mfu = f"{r.mfu:6.1%}" if r.mfu is not None else f"{'-':>6s}"
        print(f"  {r.setting:24s} {r.clips_per_s:9.2f} {r.ms_per_batch:9.1f} {r.gmacs:11.3f} {r.speedup:10.2f}x {mfu}")
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def cmd_data_synth(args) -> int:
    from .data.synthetic import synthesize

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


def cmd_data_index(args) -> int:
    from .data.manifest import index_annotations

    report = index_annotations(
        args.annotations, fmt=args.format, root=args.root, classes_uri=args.classes, out_uri=args.output,
        subset=args.subset,
    )
    print(report.summary() if hasattr(report, "summary") else report)
    return 0


def cmd_data_check(args) -> int:
    from .data.check import check_manifest

    report = check_manifest(args.manifest, root=args.root, out_bad_list=args.bad_list)
    print(report.summary())
    return 1 if report.num_bad else 0


def cmd_data_prepare(args) -> int:
    from . import storage
    from .data import prepare

    settings = prepare.EncodeSettings(
        short_side_px=args.short_side, gop=1 if args.intra else args.gop, fps=args.fps, crf=args.crf,
        preset=args.preset, fast_decode=not args.no_fastdecode, output_format=args.format,
    )
    report = prepare.prepare_dataset(args.manifest, args.out, settings, root=args.root or "",
                                     num_cpus_per_task=args.cpus_per_task, use_ray=not args.no_ray,
                                     shared_fs=args.shared_fs)
    summary = report.summary()
    if args.json:
        _print(summary, True)
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


def cmd_bench_data(args) -> int:
    import tempfile

    from .bench import data as bench_data
    from .data import manifest as data_manifest
    from .data import profile

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
        _print([{**r.__dict__, "psnr_db": fidelity.get(d.manifest)} for r, d in zip(rows, sets)], True)
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
    print("per-stage profile, CPU ms per clip of the reading thread (decord's decode includes its RGB conversion, "
          "and decord decodes on threads of its own: their CPU time lands in `other`; normalise = the batch's "
          "colour conversion + normalisation on this CPU, outside clips/s/core):")
    print(f"  {'data':22s} {'reader':18s} " + " ".join(f"{s:>9s}" for s in profile.STAGES) + f" {'other':>9s}")
    for r in rows:
        inside = sum(v for k, v in r.stages_ms.items() if k != "normalise")
        print(f"  {r.name:22s} {_reader(r):18s} " + " ".join(f"{r.stages_ms[s]:9.2f}" for s in profile.STAGES)
              + f" {max(0.0, r.ms_per_clip - inside):9.2f}")
    return 0


def _reader(row) -> str:
    return f"jpeg {row.jpeg}" if row.jpeg else f"{row.decoder} {row.pixels}"


def cmd_bench_train(args) -> int:
    from .bench.train import bench_train, loader_startup
    from .config import load_recipe, resolve

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
        _print({"plain": {**plain.__dict__, "steady_clips_per_s": plain.steady_clips_per_s},
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
    from .bench.train import data_only_run
    from .train.inputs import pixels_for

    out = data_only_run(cfg)
    if as_json:
        _print({**out.__dict__, "steady_clips_per_s": out.steady_clips_per_s}, True)
        return 0
    cores = os.cpu_count() or 1
    workers = cfg.data.num_loader_workers
    where = f"decode_nodes={cfg.data.decode_nodes}" if cfg.data.engine == "ray" else \
        f"{workers} loader workers on {cores} cores"
    print(f"{cfg.workload.name}: clips/s delivered to each of {cfg.compute.num_workers} Train worker(s) by "
          f"data.engine={cfg.data.engine} ({where}), data.pixels={cfg.data.pixels} ({pixels_for(cfg)} here), as "
          f"{'pinned' if out.pinned else 'unpinned (no GPU)'} batches, no model; steady = median of epochs 2..N; "
          f"load average {out.load_average:.1f}")
    print(f"  delivered clips/s by epoch: {' '.join(f'{r:.1f}' for r in out.clips_per_s)}; steady "
          f"{out.steady_clips_per_s:.1f}")
    if cfg.data.engine == "loader":
        ideal = out.bare_clips_per_core_s * max(1, min(workers, cores))
        print(f"  bare decode rate (bench data's measure, same files and settings): {out.bare_clips_per_core_s:.1f} "
              f"clips/s per core; x {max(1, min(workers, cores))} worker cores = {ideal:.1f}; delivered / that = "
              f"{out.steady_clips_per_s / max(ideal, 1e-9):.0%} (goal: >= 90% with one loader worker per core"
              f"{'' if workers == cores else f'; this run has {workers} workers on {cores} cores'})")
    else:
        print(f"  bare decode rate (bench data's measure, same files and settings): {out.bare_clips_per_core_s:.1f} "
              "clips/s per core")
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


def cmd_data_upload(args) -> int:
    from . import storage

    start = time.perf_counter()
    num_files, num_bytes = storage.upload_dir(args.local_dir, args.uri, num_threads=args.threads)
    target = storage.redact(args.uri)
    print(f"uploaded {num_files} files ({num_bytes / 1e6:.1f} MB) to {target} in {time.perf_counter() - start:.1f}s")
    if (Path(args.local_dir) / "manifest.parquet").is_file():
        print(f"train with:  --set data.manifest={storage.join(target, 'manifest.parquet')}")
    return 0


def cmd_submit(args) -> int:
    from . import jobs

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    env = {}
    for text in args.env:
        key, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"--env {text!r}: expected KEY=VALUE")
        env[key] = value
    job = jobs.submit(command, address=args.address, runtime_env_file=args.runtime_env, env=env,
                      submission_id=args.job_id, num_gpus=args.num_gpus)
    print(f"job id: {job.job_id}")
    print(f"address: {job.address}")
    print(f"entrypoint: {job.entrypoint}")
    print(f"env forwarded: {', '.join(job.env_keys) or '-'}", flush=True)
    if not args.follow:
        print(f"status: {jobs.status(job.job_id, address=args.address)}")
        print(f"follow: ray job logs -f {job.job_id} --address {job.address}")
        return 0
    print("--- logs ---", flush=True)
    try:
        state = jobs.follow(job.job_id, address=args.address)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (ray job stop {job.job_id} --address {job.address})")
        return 130
    print(f"--- job {job.job_id} {state} ---")
    if state != "SUCCEEDED":
        message = jobs.failure_message(job.job_id, address=args.address)
        if message:
            print(message, file=sys.stderr)
        return 1
    return 0


def cmd_mlflow_server(args) -> int:
    from . import mlflow_server

    kwargs = dict(host=args.host, port=args.port, backend_store_uri=args.backend_store_uri,
                  artifacts_destination=args.artifacts_destination, workers=args.workers)
    if args.print_command:
        from . import storage

        print(" ".join(storage.redact(a) for a in mlflow_server.command(**kwargs)))
        return 0
    mlflow_server.serve(**kwargs)
    return 0


def cmd_quickstart(args) -> int:
    """Synthetic MP4s -> Ray Train (TSM) -> MLflow -> registry -> predict, on this machine."""
    from . import tracking
    from .config import load_recipe, resolve
    from .data.manifest import read_manifest
    from .data.synthetic import synthesize
    from .models.predict import predict
    from .storage import redact
    from .train.launch import train

    t0 = time.perf_counter()
    home = tracking.home()
    data_dir = Path(args.data or home / "data" / "motion")
    manifest = data_dir / "manifest.parquet"
    print(f"[1/4] dataset: {data_dir}", flush=True)
    if not manifest.exists():
        synthesize(data_dir, num_classes=6, videos_per_class=48, num_frames=8, size_px=64, seed=0)
        print(f"      generated 6 motion classes x 48 H.264 videos in {time.perf_counter() - t0:.0f}s", flush=True)
    else:
        print("      reusing the generated dataset", flush=True)
    overrides = [f"data.manifest={manifest}", *args.set]
    if args.epochs:
        overrides.append(f"schedule.epochs={args.epochs}")
    cfg = resolve(load_recipe("smoke"), overrides)
    print(f"[2/4] training {cfg.workload.name} on Ray ({cfg.schedule.epochs} epochs, "
          f"{cfg.clip.num_frames} frames at {cfg.clip.size_px}px); MLflow store: {redact(tracking.tracking_uri())}",
          flush=True)
    outcome = train(cfg)
    print(f"[3/4] registering run {outcome.run_id} as '{args.model_name}'", flush=True)
    registered = tracking.register(outcome.run_id, args.model_name)
    model_uri = f"models:/{args.model_name}@champion"
    df = read_manifest(str(manifest))
    val = df[df["split"] == "val"].groupby("label").head(1).head(3)
    videos = [str(data_dir / v) for v in val["video"]]
    print(f"[4/4] predicting {len(videos)} videos with {model_uri}", flush=True)
    predictions = predict(model_uri, videos)
    classes = (data_dir / "classes.txt").read_text().split()
    for (_, row), pred in zip(val.iterrows(), predictions):
        top = pred.get("top", [{}])[0]
        print(f"      {Path(pred['video']).name}: predicted {top.get('class')} ({top.get('prob', 0):.2f}), "
              f"true {classes[int(row['label'])]}", flush=True)
    summary = {
        **outcome.summary(),
        "model_uri": model_uri,
        "registered_version": registered["version"],
        "champion_moved": registered["alias_moved"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "mlflow_ui": tracking.ui_command(),
    }
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(f"done in {summary['wall_s']:.0f}s: val/top1 {outcome.metrics.get('val/top1', float('nan')):.3f}; "
              f"registered {args.model_name} v{registered['version']}"
              f"{' (champion)' if registered['alias_moved'] else ' (champion unchanged: not better)'}")
        print(f"open the MLflow UI with:  {tracking.ui_command()}")
    return 0


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="actionlab", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="more logging from Ray and MLflow")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(fn=fn)
        return sp

    def sets(sp):
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. optim.lr=0.01 (repeatable)")

    sp = add("quickstart", cmd_quickstart, "generate data, train TSM on Ray, track, register, predict")
    sp.add_argument("--data", help="dataset folder (default: $ACTIONLAB_HOME/data/motion)")
    sp.add_argument("--epochs", type=int, help="override the smoke recipe's epochs")
    sp.add_argument("--model-name", default="actionlab-quickstart")
    sp.add_argument("--json", action="store_true")
    sets(sp)

    sp = add("train", cmd_train, "train a workload from a recipe on Ray Train")
    sp.add_argument("recipe", help="recipe YAML path/URI or shipped recipe name (see `actionlab list`)")
    sp.add_argument("--register", metavar="NAME", help="register the final checkpoint under NAME")
    sp.add_argument("--json", action="store_true", help="print one JSON object with the run id and metrics")
    sets(sp)

    sp = add("tune", cmd_tune, "Ray Tune sweep over Train runs (MLflow parent run + a child per trial)")
    sp.add_argument("space", help="sweep YAML path or the name of one in tune_spaces/ (see `actionlab list`)")
    sp.add_argument("--register", metavar="NAME", help="register the best completed trial's checkpoint")
    sp.add_argument("--json", action="store_true")
    sets(sp)

    sp = add("register", cmd_register, "register a run's checkpoint as a model version")
    sp.add_argument("run_id")
    sp.add_argument("--name", required=True)
    sp.add_argument("--alias", default="champion", help="moved only when the new version's val/top1 is better")
    sp.add_argument("--json", action="store_true")

    sp = add("predict", cmd_predict, "top-5 classes for videos")
    sp.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, or a checkpoint dir")
    sp.add_argument("videos", nargs="+")
    sp.add_argument("--top-k", type=int, default=5)
    sp.add_argument("--json", action="store_true")

    sp = add("serve", cmd_serve, "Ray Serve deployment of a registered model that follows its alias")
    sp.add_argument("model", help="NAME or NAME@ALIAS (default alias: champion)")
    sp.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--replicas", type=int, default=1)
    sp.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    sp.add_argument("--num-gpus", type=float, help="GPUs per replica (default: 1 when the cluster has GPUs)")
    sp.add_argument("--poll-s", type=float, default=10.0, help="how often replicas check where the alias points")
    sp.add_argument("--max-batch-size", type=int, default=8, help="videos batched into one forward pass")
    sp.add_argument("--batch-wait-ms", type=float, default=20.0, help="how long a batch waits to fill")
    sp.add_argument("--top-k", type=int, default=5)

    sp = add("serve-load", cmd_serve_load, "bounded load test of `actionlab serve`: requests/s, p50/p99 latency")
    sp.add_argument("url", help="e.g. http://127.0.0.1:8000/")
    sp.add_argument("videos", nargs="+", help="video paths/URIs the server can read, sent one per request in turn")
    sp.add_argument("--requests", type=int, default=100)
    sp.add_argument("--concurrency", type=int, default=4)

    sp = add("eval", cmd_eval, "full test protocol (clips x crops) on a manifest split")
    sp.add_argument("--model", required=True, action="append",
                    help="models:/NAME@ALIAS, models:/NAME/VERSION, or a checkpoint dir; give it again to ensemble "
                         "models (each samples with its own recorded frames; per-video scores averaged)")
    sp.add_argument("--data", required=True, help="manifest.parquet path or URI")
    sp.add_argument("--split", default="val")
    sp.add_argument("--root", help="dataset root (default: the one `data index` recorded in the manifest, else its folder)")
    sp.add_argument("--clips", type=int, default=1)
    sp.add_argument("--crops", type=int, default=1, choices=[1, 3])
    sp.add_argument("--fusion", default="logits", choices=["logits", "probs"],
                    help="average logits or softmax scores over views (and over models of an ensemble)")
    sp.add_argument("--run", help="MLflow run id to log test/top1_CLIPSxCROPS and the confusion matrix to")
    sp.add_argument("--json", action="store_true")

    def model_sets(sp):
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="workload param as in `train`, e.g. workload.params.rt=0.4, or rt=0.4 for short; "
                             "also clip.num_frames / clip.size_px (repeatable)")

    sp = add("list", cmd_list, "registered workloads, shipped recipes and tune spaces")
    sp.add_argument("--recipes", action="store_true",
                    help="the papers' tables, runnable: each recipe's protocol beside the paper's top-1 and GFLOPs")
    sp.add_argument("--gmacs", action="store_true",
                    help="with --recipes: also count each recipe's model GMACs (no weights read; minutes on 2 cores)")
    sp.add_argument("--json", action="store_true")

    sp = add("flops", cmd_flops, "GMACs and parameters of a workload, measured on the module")
    sp.add_argument("workload")
    sp.add_argument("--frames", type=int, default=8)
    sp.add_argument("--size", type=int, default=224)
    sp.add_argument("--num-classes", type=int, default=400)
    sp.add_argument("--json", action="store_true")
    model_sets(sp)

    bench_sub = sub.add_parser(
        "bench", help="side-by-side benchmarks: model forward, data decoding, training vs a plain loop",
    ).add_subparsers(dest="bench_command", required=True)

    sp = bench_sub.add_parser("data", help="decode + transform clips/s per core for each decoder and prepared copy")
    sp.set_defaults(fn=cmd_bench_data)
    sp.add_argument("manifest", nargs="?", help="your manifest (default: make Kinetics-like files and the "
                    "`data prepare` curve: keyframe interval vs size vs speed)")
    sp.add_argument("--decoders", help="comma-separated, e.g. decord,pyav (default: every one installed)")
    sp.add_argument("--videos", type=int, default=6, help="Kinetics-like videos to make (without a manifest)")
    sp.add_argument("--work-dir", help="where to make them (default: a temp folder)")
    sp.add_argument("--frames", type=int, default=8)
    sp.add_argument("--sampling", default="segments", choices=["segments", "clip"])
    sp.add_argument("--size", type=int, default=224)
    sp.add_argument("--clips", type=int, default=6, help="clips per round and row")
    sp.add_argument("--rounds", type=int, default=3)
    sp.add_argument("--gpu-clips-per-s", type=float, default=1500.0,
                    help="what one GPU consumes, for the cores-per-GPU column")
    sp.add_argument("--json", action="store_true")

    sp = bench_sub.add_parser("train", help="actionlab's Ray Train path beside a plain PyTorch loop, same "
                              "everything; or what the input pipeline delivers to a Train worker")
    sp.set_defaults(fn=cmd_bench_train)
    sp.add_argument("recipe", help="recipe YAML path/URI or shipped recipe name")
    sp.add_argument("--vs-plain", action="store_true", help="compare with a plain PyTorch loop")
    sp.add_argument("--data-only", action="store_true",
                    help="clips/s the whole input pipeline delivers to each Train worker as pinned batches (no "
                         "model), beside bench data's bare decode rate of the same files; the step's own rate; "
                         "where data.engine=ray decoded (see data.decode_nodes)")
    sp.add_argument("--json", action="store_true")
    sets(sp)

    sp = bench_sub.add_parser("model", help="forward clips/s of a workload across settings, beside a baseline")
    sp.set_defaults(fn=cmd_bench)
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
    model_sets(sp)

    data = sub.add_parser("data", help="datasets: synth, index, prepare, check, upload").add_subparsers(dest="data_command", required=True)
    sp = data.add_parser("synth", help="render the motion dataset as H.264 MP4 files")
    sp.set_defaults(fn=cmd_data_synth)
    sp.add_argument("out")
    sp.add_argument("--num-classes", type=int, default=6)
    sp.add_argument("--videos-per-class", type=int, default=48)
    sp.add_argument("--frames", type=int, default=16)
    sp.add_argument("--size", type=int, default=64)
    sp.add_argument("--seed", type=int, default=0)

    sp = data.add_parser("index", help="convert IBM / TSN / mmaction2 annotation files to a manifest")
    sp.set_defaults(fn=cmd_data_index)
    sp.add_argument("annotations")
    sp.add_argument("--format", required=True, choices=["ibm", "tsn", "mmaction"])
    sp.add_argument("--root", required=True, help="folder or URI the annotation paths are relative to; recorded in the "
                    "manifest as the default root of every later command")
    sp.add_argument("--classes", required=True, help="class-name list, one per line")
    sp.add_argument("-o", "--output", required=True, help="manifest.parquet to write")
    sp.add_argument("--subset", choices=["mini-kinetics", "mini-ssv2"],
                    help="keep only the classes of the IBM study's published subset, labels renumbered")

    sp = data.add_parser("prepare", help="re-encode a dataset for fast sampled decoding (a Ray Data job)")
    sp.set_defaults(fn=cmd_data_prepare)
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
    sp.add_argument("--format", default="mp4", choices=["mp4", "jpeg"], help="H.264 MP4, or JPEG frame folders")
    sp.add_argument("--codec", default="h264", choices=["h264"], help="output codec")
    sp.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs Ray reserves per video")
    sp.add_argument("--no-ray", action="store_true", help="run in this process instead of a Ray Data job")
    sp.add_argument("--shared-fs", action="store_true",
                    help="local --root and OUT are on a file system every node mounts at the same path (NFS, FSx); "
                         "without it a Ray cluster of several nodes refuses them")
    sp.add_argument("--json", action="store_true")

    sp = data.add_parser("upload", help="copy a dataset folder to s3://bucket/prefix as it is (rewrites nothing)")
    sp.set_defaults(fn=cmd_data_upload)
    sp.add_argument("local_dir", help="dataset folder (manifest.parquet, classes.txt, videos/)")
    sp.add_argument("uri", help="destination, e.g. s3://bucket/datasets/motion (the bucket must exist)")
    sp.add_argument("--threads", type=int, default=8, help="parallel uploads")

    sp = data.add_parser("check", help="pre-flight: open every video, list the bad ones and what to fix")
    sp.set_defaults(fn=cmd_data_check)
    sp.add_argument("manifest")
    sp.add_argument("--root")
    sp.add_argument("--bad-list", help="write the bad files as CSV here")

    sp = add("submit", cmd_submit, "run an actionlab command as a Ray job (Jobs SDK + platform/runtime_env.yaml)")
    sp.add_argument("--address", help="Ray dashboard URL (default: $RAY_API_SERVER_ADDRESS, an http $RAY_ADDRESS, "
                    "or http://127.0.0.1:8265)")
    sp.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 1 unless it succeeded")
    sp.add_argument("--runtime-env", help="runtime env YAML (default: platform/runtime_env.yaml of this checkout)")
    sp.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra env var for the job (credentials are refused: the dashboard shows them)")
    sp.add_argument("--job-id", help="submission id (default: actionlab-COMMAND-TIMESTAMP-RANDOM)")
    sp.add_argument("--num-gpus", type=float, help="GPUs reserved for the job's driver (usually none)")
    sp.add_argument("command", nargs=argparse.REMAINDER, help="-- train|tune|eval ... (an actionlab command)")

    weights = sub.add_parser("weights", help="official checkpoints: import, zoo").add_subparsers(
        dest="weights_command", required=True)
    sp = weights.add_parser("import", help="convert an official checkpoint to a model dir (predict/eval/register)")
    sp.set_defaults(fn=cmd_weights_import)
    sp.add_argument("workload")
    sp.add_argument("checkpoint", help="the released file (.pth/.pth.tar/.pt/.safetensors); read with weights_only")
    sp.add_argument("-o", "--output", required=True, help="model dir to write (must not exist or be empty)")
    sp.add_argument("--num-classes", type=int, required=True)
    sp.add_argument("--frames", type=int, required=True,
                    help="frames per clip the checkpoint was trained with (segments for snippet sampling: h2cn)")
    sp.add_argument("--size", type=int, default=224, help="input size in px")
    sp.add_argument("--classes", help="class names, one per line, in the checkpoint's class-index order")
    sp.add_argument("--register", metavar="NAME", help="also register it (tags: source=official, paper, top-1)")
    sp.add_argument("--dataset", help="dataset tag for --register (default: the zoo's)")
    sp.add_argument("--zoo", metavar="ENTRY", help="the `weights zoo` row this checkpoint is (tags for --register)")
    sp.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                    help="workload param the checkpoint was trained with, e.g. depth=101 (repeatable)")
    sp = weights.add_parser("zoo", help="the released checkpoints and their paper numbers")
    sp.set_defaults(fn=cmd_weights_zoo)

    sp = add("mlflow-server", cmd_mlflow_server,
             "MLflow tracking server: database store + proxied S3 or local artifact root")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument("--backend-store-uri", default="",
                    help="database URI (default: sqlite:///$ACTIONLAB_HOME/server/mlflow.db)")
    sp.add_argument("--artifacts-destination", default="",
                    help="s3://bucket/prefix or a folder (default: $ACTIONLAB_HOME/server/artifacts)")
    sp.add_argument("--workers", type=int, default=1)
    sp.add_argument("--print-command", action="store_true", help="print the `mlflow server` command and exit")
    return p


BENCH_COMMANDS = ("data", "model", "train", "-h", "--help")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and len(argv) > 1 and argv[1] not in BENCH_COMMANDS:
        argv.insert(1, "model")  # `actionlab bench WORKLOAD` from before `bench data` / `bench train`
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["ACTIONLAB_VERBOSE"] = "1"
    else:
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return args.fn(args) or 0
    except Exception as err:
        # Errors a user can act on get one line; anything else keeps its traceback.
        user_facing = isinstance(err, (ValueError, KeyError, FileNotFoundError, RuntimeError)) or type(
            err
        ).__module__.startswith("ray.train")
        if args.verbose or not user_facing:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"actionlab: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
