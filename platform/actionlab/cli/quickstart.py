"""`actionlab quickstart`: synthetic MP4s -> Ray Train (TSM) -> MLflow -> registry -> predict, on this machine."""

from __future__ import annotations

import time
from pathlib import Path

from .common import add_command, add_set_option, print_result


def add_parser(subparsers) -> None:
    """Adds `quickstart` to the top-level subparsers."""
    sp = add_command(subparsers, "quickstart", run_quickstart,
                     "generate data, train TSM on Ray, track, register, predict")
    sp.add_argument("--data", help="dataset folder (default: $ACTIONLAB_HOME/data/motion)")
    sp.add_argument("--epochs", type=int, help="override the smoke recipe's epochs")
    sp.add_argument("--model-name", default="actionlab-quickstart")
    sp.add_argument("--json", action="store_true")
    add_set_option(sp)


def run_quickstart(args) -> int:
    """The platform end to end, each step a library call, with progress lines between them."""
    from .. import tracking
    from ..config import load_recipe, resolve
    from ..data.manifest import read_manifest
    from ..data.synthetic import synthesize
    from ..models import registry
    from ..models.predict import predict
    from ..storage import redact
    from ..train.launch import train

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
    registered = registry.register(outcome.run_id, args.model_name)
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
        print_result(summary, True)
    else:
        print(f"done in {summary['wall_s']:.0f}s: val/top1 {outcome.metrics.get('val/top1', float('nan')):.3f}; "
              f"registered {args.model_name} v{registered['version']}"
              f"{' (champion)' if registered['alias_moved'] else ' (champion unchanged: not better)'}")
        print(f"open the MLflow UI with:  {tracking.ui_command()}")
    return 0
