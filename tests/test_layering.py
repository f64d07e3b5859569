"""Dependencies point one way (STYLE.md rules 4 and 11).

`workloads` is pure PyTorch + timm: checked in a fresh interpreter, because this test session has
already imported everything.

Inside `actionlab`, read from the source (every `import`, those inside functions included):
no import circle, and no module imports one of a higher layer. The layers, bottom to top (a module
may import its own layer and those below; `LAYERS` below is the same table):

| layer         | modules                                                                        |
|---------------|--------------------------------------------------------------------------------|
| base          | storage.*, config, flops, data.* (but data.prepare), models.meta, the packages |
| runs          | tracking, models.folder, models.registry, cluster                              |
| train workers | train.* (but train.launch): what runs inside a Ray Train worker                |
| drivers       | train.launch, tune.*, data.prepare, jobs, mlflow_server                        |
| model use     | models.* (predict, pyfunc, serve, weights), bench.*                            |
| cli           | cli, cli.*, __main__                                                           |

`models.meta` (what meta.json records) imports nothing of actionlab's and sits with the config in
the base layer. The packages' `__init__` modules hold docstrings only and sit at the bottom too, so
one that starts importing the modules above it is caught. A module over 500 lines holds two jobs
(rule 11) unless `LONG_MODULES` gives the reason it does not.
"""

import ast
import fnmatch
import graphlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("ray", "mlflow", "boto3", "botocore", "pyarrow", "decord")

_PROBE = f"""
import importlib, pkgutil, sys
import workloads
names = [m.name for m in pkgutil.walk_packages(workloads.__path__, "workloads.")]
for name in names:
    importlib.import_module(name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({FORBIDDEN!r}))
print("modules:", len(names))
print("forbidden:", ",".join(loaded))
"""


def test_workloads_import_no_platform_dependencies():
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.strip().splitlines())
    assert int(lines["modules"]) >= 4  # registry, tsn, tsm, layers.* at least
    assert lines["forbidden"].strip() == "", f"workloads imported {lines['forbidden'].strip()}"


def test_the_platform_reads_sampling_and_normalisation_through_input_for():
    """`spec.sampling/mean/std` are what a workload declares; params may change them (SV-Mix)."""
    import re

    pattern = re.compile(r"\bspec\.(sampling|mean|std|snippet_frames)\b")
    hits = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "platform").rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, f"use spec.input_for(params) instead of the declared fields: {hits}"


# --- inside actionlab: the import graph ------------------------------------------------------------

PLATFORM = REPO / "platform"
LAYERS = {  # bottom to top; an exact name wins over a pattern, a longer pattern over a shorter one
    "base": ("actionlab", "actionlab.storage", "actionlab.storage.*", "actionlab.config", "actionlab.flops",
             "actionlab.data", "actionlab.data.*", "actionlab.models", "actionlab.models.meta", "actionlab.train",
             "actionlab.tune", "actionlab.bench"),
    "runs": ("actionlab.tracking", "actionlab.models.folder", "actionlab.models.registry", "actionlab.cluster"),
    "train workers": ("actionlab.train.*",),
    "drivers": ("actionlab.train.launch", "actionlab.tune.*", "actionlab.data.prepare", "actionlab.jobs",
                "actionlab.mlflow_server"),
    "model use": ("actionlab.models.*", "actionlab.bench.*"),
    "cli": ("actionlab.cli", "actionlab.cli.*", "actionlab.__main__"),
}
MAX_LINES = 500
LONG_MODULES: dict[str, str] = {}  # module: why it is one job all the same (none today)


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the actionlab package (a package is its `__init__`)."""
    modules = {}
    for path in sorted((PLATFORM / "actionlab").rglob("*.py")):
        parts = path.relative_to(PLATFORM).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The actionlab modules that `name` imports anywhere in its source (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from ..models import folder` in actionlab.train.loop
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from X import y` imports the module X.y when there is one, else a name of X.
            targets += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = set()
    for target in targets:
        while target not in modules and "." in target:  # `import actionlab.data.dataset.x` -> its module
            target = target.rpartition(".")[0]
        if target in modules and target != name:
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each actionlab module -> the actionlab modules it imports."""
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    """Index in `LAYERS` of the most specific entry naming `module`.

    Raises:
        LookupError: no entry names it (a new module: add it to `LAYERS` and the docstring's table).
    """
    best = None  # (exact match, pattern length, layer)
    for index, patterns in enumerate(LAYERS.values()):
        for pattern in patterns:
            if fnmatch.fnmatchcase(module, pattern):
                rank = (pattern == module, len(pattern), index)
                best = max(best, rank) if best else rank
    if best is None:
        raise LookupError(f"{module} is in no layer; add it to LAYERS in {Path(__file__).name} and to its table")
    return best[2]


def test_import_graph_reads_function_level_and_relative_imports():
    graph = import_graph()
    assert "actionlab.models.folder" in graph["actionlab.train.evaluate"]  # imported inside a function
    assert "actionlab.models.registry" in graph["actionlab.train.launch"]  # `from ..models import registry`
    assert "actionlab.storage" in graph["actionlab.tracking"]  # `from . import storage`, inside functions


def test_no_import_circle_in_actionlab():
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as err:
        circle = err.args[1]
        raise AssertionError(f"import circle: {' -> '.join(reversed(circle))}; move what both sides need into a "
                             "lower module") from None
    assert "actionlab.cli" in order


def test_no_import_up_the_layers():
    graph = import_graph()
    layer = {module: layer_of(module) for module in graph}  # every module has one, whether it imports or not
    names = list(LAYERS)
    upward = [f"{module} ({names[layer[module]]}) imports {target} ({names[layer[target]]})"
              for module, targets in sorted(graph.items()) for target in sorted(targets)
              if layer[target] > layer[module]]
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_module_over_500_lines_without_a_reason():
    lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    long = sorted(f"{name}: {n} lines" for name, n in lengths.items() if n > MAX_LINES and name not in LONG_MODULES)
    assert not long, f"modules over {MAX_LINES} lines hold two jobs (STYLE.md rule 11): split them, or write the " \
                     f"reason in LONG_MODULES: {long}"
    stale = sorted(name for name in LONG_MODULES if lengths.get(name, 0) <= MAX_LINES)
    assert not stale, f"in LONG_MODULES but gone or not over {MAX_LINES} lines now; remove them: {stale}"


def _private_uses(name: str, path: Path, modules: dict[str, Path]) -> list[str]:
    """`module._name` that `name` reaches in another actionlab module: `from X import _y`, or `_y` read
    as an attribute of a name bound to an actionlab module by an import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    bound, found = {}, []  # local name -> actionlab module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    bound[alias.asname or alias.name] = full
                elif base in modules and base != name and alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{name}: from {base} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    bound[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__") and bound[node.value.id] != name):
            found.append(f"{name}: {bound[node.value.id]}.{node.attr}")
    return found


def test_no_module_reaches_into_another_modules_private_names():
    """A name another module needs is public (documented, kept); `_name` may change without notice."""
    modules = _modules()
    uses = sorted(use for name, path in modules.items() for use in _private_uses(name, path, modules))
    assert not uses, "private names used across modules; make them public where they belong:\n" + "\n".join(uses)
