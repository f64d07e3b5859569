"""Writes a golden fixture (`tests/fixtures/golden/<method>/`, format in `tests/golden.py`) from an
official model built by a clone of the official repository. Run by the per-method scripts beside this
one, never in CI; the official code is imported from the clone, never copied into the project.

    python scripts/golden/<method>.py --official /path/to/clone

Each script builds the official model at a reduced size (same blocks), and calls `write_golden`, which
loads the rule's weights into it (`golden.generated_tensor`), runs it in eval mode on a fixed clip,
writes the fixture, and checks it at once through actionlab's importer (the test's own check).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "platform"), str(REPO)]

import golden  # noqa: E402


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--official", required=True, type=Path, help="a clone of the official repository")
    return parser.parse_args()


def commit_of(clone: Path) -> str:
    """The clone's HEAD commit (a bare mirror or a work tree)."""
    return subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def clip(shape: tuple, seed: int = 0) -> torch.Tensor:
    """A fixed normalised clip, (B, T, C, H, W) as actionlab feeds it."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def write_golden(method: str, *, model: torch.nn.Module, official: dict, checkpoint: dict, imports: dict,
                 inputs: dict, official_forward, swap: tuple, forward: str = "logits", stored: tuple = (),
                 load: str = "import", notes: str = "") -> Path:
    """Loads the rule's weights into the official `model`, runs `official_forward(model, inputs)` (a dict of
    outputs), and writes `tests/fixtures/golden/<method>/`.

    official: {"repo": "owner/name", "commit": ..., "model": "file.py: how it was built"}
    checkpoint: {"file": name, "wrapper": template with golden.STATE, "prefix": "module." or ""}
    imports: the `weights import` arguments: workload, num_classes, num_frames, params (, size_px)
    inputs: tensors the adapter reads; "input" is the clip in actionlab's layout
    stored: state keys kept as they are (integer buffers always are)
    load: "import" (`weights import`), or the name of a loader in `golden.LOADERS`
    """
    from safetensors.torch import save_file

    entries, kept = [], {}
    state = {}
    for key, value in model.state_dict().items():
        keep = key in stored or not value.is_floating_point()
        entries.append([key, list(value.shape), str(value.dtype).removeprefix("torch."), "stored" if keep else "gen"])
        state[key] = value.clone() if keep else golden.generated_tensor(key, list(value.shape), entries[-1][2])
        if keep:
            kept[f"state.{key}"] = value.detach().clone().contiguous()
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        outputs = official_forward(model, inputs)
    folder = golden.GOLDEN / method
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"method": method, "official": official, "checkpoint": checkpoint, "import": imports, "forward": forward,
            "load": load, "swap": list(swap), "notes": notes, "state": entries}
    (folder / "golden.json").write_text(json.dumps(spec, indent=1) + "\n")
    tensors = {**{k: v.contiguous() for k, v in inputs.items()}, **kept,
               **{f"output.{k}": v.detach().float().contiguous() for k, v in outputs.items()}}
    save_file(tensors, str(folder / "io.safetensors"))
    _check(method)
    return folder


def _check(method: str) -> None:
    """The test's check, at once: imported outputs equal, the swapped pair changes them."""
    sys.path.insert(0, str(REPO / "tests"))
    import test_golden

    with tempfile.TemporaryDirectory() as tmp:
        g = golden.load(method)
        errors = test_golden._errors(g, test_golden._imported(g, Path(tmp) / "a"))
        swapped = test_golden._errors(g, test_golden._imported(g, Path(tmp) / "b", swap=True))
    print(f"{method}: relative error {errors} (<= {golden.RTOL}); with {g.spec['swap']} exchanged {swapped}")
    if max(errors.values()) > golden.RTOL:
        raise SystemExit(f"{method}: actionlab's import does not compute the official outputs")
