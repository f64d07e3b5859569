"""Commands on trained models: `register`, `predict`, `serve`, `serve-load` and `eval`."""

from __future__ import annotations

from ..config import EvalConfig
from .common import add_command, literal_choices, print_result


def add_parser(subparsers) -> None:
    """Adds `register`, `predict`, `serve`, `serve-load` and `eval` to the top-level subparsers."""
    sp = add_command(subparsers, "register", run_register, "register a run's checkpoint as a model version")
    sp.add_argument("run_id")
    sp.add_argument("--name", required=True)
    sp.add_argument("--alias", default="champion", help="moved only when the new version's val/top1 is better")
    sp.add_argument("--json", action="store_true")

    sp = add_command(subparsers, "predict", run_predict, "top-5 classes for videos")
    sp.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, or a checkpoint dir")
    sp.add_argument("videos", nargs="+")
    sp.add_argument("--top-k", type=int, default=5)
    sp.add_argument("--json", action="store_true")

    sp = add_command(subparsers, "serve", run_serve, "Ray Serve deployment of a registered model that follows its alias")
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

    sp = add_command(subparsers, "serve-load", run_serve_load,
                     "bounded load test of `actionlab serve`: requests/s, p50/p99 latency")
    sp.add_argument("url", help="e.g. http://127.0.0.1:8000/")
    sp.add_argument("videos", nargs="+", help="video paths/URIs the server can read, sent one per request in turn")
    sp.add_argument("--requests", type=int, default=100)
    sp.add_argument("--concurrency", type=int, default=4)

    sp = add_command(subparsers, "eval", run_eval, "full test protocol (clips x crops) on a manifest split")
    sp.add_argument("--model", required=True, action="append",
                    help="models:/NAME@ALIAS, models:/NAME/VERSION, or a checkpoint dir; give it again to ensemble "
                         "models (each samples with its own recorded frames; per-video scores averaged)")
    sp.add_argument("--data", required=True, help="manifest.parquet path or URI")
    sp.add_argument("--split", default="val")
    sp.add_argument("--root", help="dataset root (default: the one `data index` recorded in the manifest, else its folder)")
    sp.add_argument("--clips", type=int, default=1)
    sp.add_argument("--crops", type=int, default=1, choices=[1, 3])
    sp.add_argument("--fusion", default="logits", choices=literal_choices(EvalConfig, "fusion"),
                    help="average logits or softmax scores over views (and over models of an ensemble)")
    sp.add_argument("--run", help="MLflow run id to log test/top1_CLIPSxCROPS and the confusion matrix to")
    sp.add_argument("--json", action="store_true")


def run_register(args) -> int:
    """`actionlab register RUN_ID --name NAME`: `models.registry.register`."""
    from ..models import registry

    info = registry.register(args.run_id, args.name, alias=args.alias)
    print_result(info, args.json)
    return 0


def run_predict(args) -> int:
    """`actionlab predict --model MODEL VIDEO...`: `models.predict.predict`; exit 1 when a video failed."""
    from ..models.predict import predict

    results = predict(args.model, args.videos, top_k=args.top_k)
    if args.json:
        print_result(results, True)
    else:
        for r in results:
            if "error" in r:
                print(f"{r['video']}: ERROR {r['error']}")
                continue
            top = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"])
            print(f"{r['video']}: {top}")
    return 1 if any("error" in r for r in results) else 0


def run_serve(args) -> int:
    """`actionlab serve MODEL`: `models.serve.serve_forever`."""
    from ..models.serve import serve_forever

    serve_forever(args.model, host=args.host, port=args.port, replicas=args.replicas, num_cpus=args.num_cpus,
                  num_gpus=args.num_gpus, poll_s=args.poll_s, max_batch_size=args.max_batch_size,
                  batch_wait_s=args.batch_wait_ms / 1000, top_k=args.top_k)
    return 0


def run_serve_load(args) -> int:
    """`actionlab serve-load URL VIDEO...`: `models.serve.load_test`, printed as JSON."""
    from ..models.serve import load_test

    print_result(load_test(args.url, args.videos, requests=args.requests, concurrency=args.concurrency), True)
    return 0


def run_eval(args) -> int:
    """`actionlab eval --model MODEL --data MANIFEST`: `train.evaluate.evaluate_models`, per member and fused."""
    from ..train.evaluate import evaluate_models

    summary = evaluate_models(args.model, args.data, split=args.split, root=args.root or "", num_clips=args.clips,
                              num_crops=args.crops, fusion=args.fusion, run_id=args.run or "")
    if args.json:
        print_result(summary, True)
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
