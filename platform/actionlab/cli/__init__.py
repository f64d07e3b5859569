"""`actionlab ...`: the command line. Each subcommand is a thin layer over a library function."""

from __future__ import annotations

import argparse
import os
import sys

from . import bench, data, mlflow_server, models, quickstart, recipes, submit, train, weights

# The parser's command groups, in the order `actionlab --help` lists their commands.
GROUPS = (quickstart, train, models, recipes, bench, data, submit, weights, mlflow_server)
BENCH_COMMANDS = ("data", "model", "train", "-h", "--help")


def build_parser() -> argparse.ArgumentParser:
    """The `actionlab` parser: each command group adds its commands; a command's `fn` runs it."""
    p = argparse.ArgumentParser(prog="actionlab", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="more logging from Ray and MLflow")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` (default: the process's arguments) and runs the command.

    Returns:
        The command's exit status; 2 with one `actionlab: error: ...` line on stderr for an error a
        user can act on (anything else, and every error under `-v`, keeps its traceback).
    """
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
