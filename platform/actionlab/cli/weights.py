"""`actionlab weights {import,zoo}`: official released checkpoints as model dirs, and the zoo of them."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    """Adds the `weights` group to the top-level subparsers."""
    weights = subparsers.add_parser("weights", help="official checkpoints: import, zoo").add_subparsers(
        dest="weights_command", required=True)
    sp = weights.add_parser("import", help="convert an official checkpoint to a model dir (predict/eval/register)")
    sp.set_defaults(fn=run_import)
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
    sp.set_defaults(fn=run_zoo)


def run_import(args) -> int:
    """`actionlab weights import WORKLOAD CHECKPOINT -o DIR`: `models.weights.import_checkpoint`, and
    `register_import` with `--register`."""
    from ..config import parse_override
    from ..models import weights

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


def run_zoo(args) -> int:
    """`actionlab weights zoo`: `models.weights.ZOO`, one row per release with the command that imports it."""
    from ..models import weights

    for z in weights.ZOO:
        print(f"{z.name:28s} {z.dataset:24s} top-1 {z.paper_top1 or 'n/a':>6s}  {z.command()}")
    return 0
