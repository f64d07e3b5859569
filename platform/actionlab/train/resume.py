"""What a checkpoint holds, so that a restarted worker goes on after the last epoch it reported.

One `state.pt` per checkpoint, written with `torch.save` and read back with `weights_only=True`
(tensors and plain containers only, never code): the model, optimiser and LR scheduler, the epochs
done, the torch RNG, the last epoch's metrics, the distinct bad samples met so far, and the metric
steps MLflow has not confirmed yet (`tracking.MetricBuffer.state()`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

STATE_FILE = "state.pt"


@dataclass
class Progress:
    """How far a run got, besides the weights and optimiser state."""

    epochs_done: int = 0
    metrics: dict = field(default_factory=dict)  # the last epoch's, as reported
    bad_examples: list = field(default_factory=list)  # distinct (video_id, reason) met so far, on every rank
    tracking: dict | None = None  # `MetricBuffer.state()`: metric steps not yet written to MLflow


def save(folder: Path, progress: Progress, *, model: nn.Module, optimizer, scheduler) -> Path:
    """Writes `folder/state.pt` (rank 0, once per epoch)."""
    path = Path(folder) / STATE_FILE
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": progress.epochs_done - 1,  # the last finished epoch, 0-based
            "metrics": progress.metrics,
            "torch_rng": torch.get_rng_state(),
            "bad_examples": [[vid, why] for vid, why in dict(progress.bad_examples).items()],
            "tracking": progress.tracking,
        },
        path,
    )
    return path


def restore(folder: Path, *, model: nn.Module, optimizer, scheduler) -> Progress:
    """Loads `folder/state.pt` into the model, optimiser, scheduler and torch RNG; returns the rest."""
    state = load_state(Path(folder) / STATE_FILE)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return Progress(
        epochs_done=int(state["epoch"]) + 1,
        metrics=dict(state.get("metrics", {})),
        bad_examples=[(str(vid), str(why)) for vid, why in state.get("bad_examples", [])],
        tracking=state.get("tracking"),
    )


def load_state(path: Path) -> dict:
    """A resume state written by `save`: tensors and plain containers only (`weights_only=True`).

    Raises:
        ValueError: the file holds anything else (e.g. a pickle that would run code); it is not executed.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path} is not a resume state this platform wrote and was refused unexecuted ({first}). "
            "Delete that checkpoint folder to resume from an earlier one, or start afresh with "
            "--set tracking.run_name=NEW_NAME"
        ) from None
