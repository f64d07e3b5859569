"""`actionlab list`: the registered workloads, shipped recipes and tune spaces; with `--recipes`, the
papers' tables beside each recipe's protocol."""

from __future__ import annotations

from .common import add_command, print_result


def add_parser(subparsers) -> None:
    """Adds `list` to the top-level subparsers."""
    sp = add_command(subparsers, "list", run_list, "registered workloads, shipped recipes and tune spaces")
    sp.add_argument("--recipes", action="store_true",
                    help="the papers' tables, runnable: each recipe's protocol beside the paper's top-1 and GFLOPs")
    sp.add_argument("--gmacs", action="store_true",
                    help="with --recipes: also count each recipe's model GMACs (no weights read; minutes on 2 cores)")
    sp.add_argument("--json", action="store_true")


def run_list(args) -> int:
    """`actionlab list`: the workload registry, `config.shipped_recipes` and `tune_spaces.list_spaces`."""
    from workloads import get_workload, list_workloads

    from ..config import shipped_recipes

    if args.recipes:
        return run_list_recipes(args)
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
        print_result(listing, True)
        return 0
    print("workloads:")
    for name, text in listing["workloads"].items():
        print(f"  {name:10s} {text}")
    print("recipes:  " + " ".join(listing["recipes"]) + "   (`actionlab list --recipes`: the papers' tables)")
    print("spaces:   " + (" ".join(listing["spaces"]) or "-"))
    return 0


def run_list_recipes(args) -> int:
    """`actionlab list --recipes`: `flops.recipe_rows` grouped by source, and `config.not_runnable_rows`."""
    from ..config import not_runnable_rows
    from ..flops import recipe_rows

    rows = recipe_rows(measure=args.gmacs)
    skipped = not_runnable_rows()
    if args.json:
        print_result({"recipes": rows, "not_runnable": skipped}, True)
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
