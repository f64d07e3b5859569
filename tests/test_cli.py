"""The command line as a package (STYLE.md rule 11): one module per command group, each a thin layer
that reads its choice lists from where the library declares them and imports nothing private."""

import argparse
import ast
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from actionlab import cli, config
from actionlab.data import manifest
from workloads.registry import SAMPLINGS

REPO = Path(__file__).resolve().parents[1]
CLI_DIR = Path(cli.__file__).parent
MODULES = sorted(CLI_DIR.glob("*.py"))


def _parsers(parser, path=("actionlab",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = dict(_parsers(cli.build_parser()))
COMMANDS = [path for path, parser in PARSERS.items() if "fn" in parser._defaults]


def _choices(command: str, option: str) -> list:
    parser = PARSERS[tuple(command.split())]
    return list(next(a for a in parser._actions if option in a.option_strings).choices)


def _literal(cls, name):
    return list(typing.get_args(typing.get_type_hints(cls)[name]))


def test_choices_are_the_lists_the_library_declares():
    assert _choices("actionlab eval", "--fusion") == _literal(config.EvalConfig, "fusion")
    assert _choices("actionlab data index", "--format") == list(manifest.FORMATS)
    assert _choices("actionlab data index", "--subset") == list(manifest.SUBSETS)
    # `bench data` samples one frame per segment, where `snippets` is `segments` again.
    assert _choices("actionlab bench data", "--sampling") == [
        s for s in SAMPLINGS if s != "snippets"]


def test_every_command_runs_a_handler_of_its_group_module():
    assert len(COMMANDS) >= 20
    for path in COMMANDS:
        fn = PARSERS[path]._defaults["fn"]
        assert fn.__name__.startswith("run_"), (path, fn.__name__)
        assert fn.__module__.startswith("actionlab.cli.") and fn.__module__ != "actionlab.cli.common", (path, fn)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_a_cli_module_is_small_and_imports_nothing_private(module):
    text = module.read_text()
    assert len(text.splitlines()) < 500
    tree = ast.parse(text)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{module.name}:{node.lineno} imports {private} from {node.module}"
            imported |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            raise AssertionError(f"{module.name}:{node.lineno} uses the private {node.value.id}.{node.attr}")


@pytest.mark.parametrize("path", [p for p in PARSERS if len(p) > 1], ids=" ".join)
def test_every_command_has_a_help_that_exits_0(path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main([*path[1:], "--help"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {' '.join(path)}")


def test_python_dash_m_lists_every_command():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}
    result = subprocess.run([sys.executable, "-m", "actionlab", "--help"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(path[1] in result.stdout for path in COMMANDS)
