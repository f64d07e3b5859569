"""Dependencies point one way: `workloads` is pure PyTorch + timm (STYLE.md rule 4).

Checked in a fresh interpreter, because this test session has already imported everything.
"""

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
