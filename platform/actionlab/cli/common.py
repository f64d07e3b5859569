"""What several command groups share: printing a result, the `--set` options, and choice lists read
from the dataclass field that declares them."""

from __future__ import annotations

import dataclasses
import json
import sys
import typing


def print_result(obj, as_json: bool) -> None:
    """Prints a command's result: one JSON line, or `key: value` lines for a mapping.

    Args:
        obj: the result (a mapping, a list or anything printable).
        as_json: print it as one JSON line (`--json`).
    """
    if as_json:
        # One write, flushed now: Ray's threads and child processes print to the same terminal or log
        # file, and the line must reach it whole (a reader takes the last line as the result).
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()
    elif isinstance(obj, dict):
        for key, value in obj.items():
            print(f"{key}: {value}")
    else:
        print(obj)


def literal_choices(cls: type, name: str) -> tuple:
    """The values of dataclass `cls`'s `Literal` field `name`, for an option's `choices`.

    Args:
        cls: a dataclass whose field `name` is annotated `Literal[...]` (e.g. `config.EvalConfig`).
        name: the field.

    Returns:
        The Literal's values in declaration order.
    """
    # get_type_hints, not the raw annotation: the modules use `from __future__ import annotations`.
    return typing.get_args(typing.get_type_hints(cls)[name])


def add_set_option(parser) -> None:
    """`--set KEY=VALUE`: a dotted config override, as `train`, `tune` and `quickstart` take it."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. optim.lr=0.01 (repeatable)")


def add_model_set_option(parser) -> None:
    """`--set KEY=VALUE` for commands that build one workload (`flops`, `bench model`)."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="workload param as in `train`, e.g. workload.params.rt=0.4, or rt=0.4 for short; "
                             "also clip.num_frames / clip.size_px (repeatable)")


def model_overrides(workload: str, sets: list[str], *, params: dict | None = None):
    """Resolves the `--set` of a command that builds one workload.

    Keys are dotted config keys as in `train` (`workload.params.rt=0.4`, `clip.num_frames=12`) or bare
    workload params as a shorthand (`rt=0.4`).

    Args:
        workload: the workload the command builds.
        sets: the `--set` texts.
        params: workload params to start from (e.g. its tiny CPU params).

    Returns:
        The resolved Config and the workload params given (`params` + `--set`).

    Raises:
        ConfigError: a key that does not change the model (the error names the ones that do), or
            `workload.name` (the command's first argument names it).
    """
    from ..config import Config, ConfigError, merge, parse_override, resolve

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
        given = merge(given, parse_override(text))
    return resolve({"workload": {"name": workload, "params": dict(params or {})}}, dotted), given["workload"]["params"]


def frames_and_size(args, cfg, sets: list[str]) -> tuple[int, int]:
    """Frames and crop size: `--set clip.num_frames` / `clip.size_px` win over `--frames` / `--size`."""
    given = {text.split("=", 1)[0].strip() for text in sets}
    frames = cfg.clip.num_frames if "clip.num_frames" in given else args.frames
    size = cfg.clip.size_px if "clip.size_px" in given else args.size
    return frames, size


def add_command(subparsers, name: str, fn, help_text: str):
    """A top-level command whose `help` (in `actionlab --help`) is also its description; `fn` runs it."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(fn=fn)
    return parser
