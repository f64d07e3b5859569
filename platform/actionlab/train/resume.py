"""What a checkpoint holds, so that a restarted worker goes on where the last checkpoint was taken, and
when checkpoints are taken inside an epoch.

One `state.pt` per checkpoint, written with `torch.save` and read back with `weights_only=True`
(tensors and plain containers only, never code): the model, optimiser and LR scheduler, the epochs
done, the RNG of every rank (torch, and CUDA on GPUs), the last epoch's metrics, the distinct bad
samples met so far, and the metric steps MLflow has not confirmed yet (`tracking.MetricBuffer.state()`).
A checkpoint taken inside an epoch also holds its position in the epoch's sampler order (`position`)
and every rank's statistics of the epoch so far (`epoch_stats`), so the resumed epoch skips the batches
already trained on and reports the whole epoch. Checkpoints written before these keys existed resume as
epoch-end checkpoints.
"""

from __future__ import annotations

import pickle
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.decode import first_line
from .epoch import EpochStats

STATE_FILE = "state.pt"
MID_EPOCH_KEY = "epoch_step"  # in the metrics reported with a checkpoint taken inside an epoch


@dataclass
class Progress:
    """How far a run got, besides the weights and optimiser state."""

    epochs_done: int = 0
    metrics: dict = field(default_factory=dict)  # the last epoch's, as reported
    bad_examples: list = field(default_factory=list)  # distinct (video_id, reason) met so far, on every rank
    tracking: dict | None = None  # `MetricBuffer.state()`: metric steps not yet written to MLflow
    # Inside epoch `epochs_done` (0-based): {"step": batches each rank took, "samples": the sampler's start
    # for the rest (`ResumableSampler.position_after`), "world": ranks}; None at an epoch's end.
    position: dict | None = None
    epoch_stats: list | None = None  # per rank, `stats_state` of the epoch's batches so far (with `position`)


def inside_epoch(before: Progress, *, epoch: int, step: int, samples: int, world: int, stats_by_rank: list,
                 bad_examples: list) -> Progress:
    """The progress of a checkpoint taken `step` steps into epoch `epoch` (0-based).

    Args:
        before: the progress at the epoch's start (its metrics are the last finished epoch's).
        samples: the sampler position of the next batch (`ResumableSampler.position_after`).
        world: ranks that trained the steps.
        stats_by_rank: every rank's `stats_state` of the epoch so far.
        bad_examples: distinct bad samples met so far, this epoch's included, on every rank.
    """
    return Progress(epochs_done=epoch, metrics=dict(before.metrics), bad_examples=list(bad_examples),
                    tracking=before.tracking, position={"step": step, "samples": samples, "world": world},
                    epoch_stats=list(stats_by_rank))


def checkpoint_name(progress: Progress) -> str:
    """The checkpoint's folder name: `epoch_0003` after 3 epochs, `epoch_0003_step_000120` 120 steps
    into the 4th; names sort in training order."""
    name = f"epoch_{progress.epochs_done:04d}"
    return f"{name}_step_{progress.position['step']:06d}" if progress.position else name


def save(folder: Path, progress: Progress, *, model: nn.Module, optimizer, scheduler,
         rng_by_rank: list | None = None) -> Path:
    """Writes `folder/state.pt` (rank 0).

    Args:
        rng_by_rank: every rank's `rng_state()` (gathered); None keeps this process's.
    """
    rng_by_rank = rng_by_rank or [rng_state()]
    path = Path(folder) / STATE_FILE
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": progress.epochs_done - 1,  # the last finished epoch, 0-based
        "position": progress.position,
        "epoch_stats": progress.epoch_stats,
        "metrics": progress.metrics,
        "torch_rng": rng_by_rank[0]["torch"],
        "rng_by_rank": rng_by_rank,
        "bad_examples": [[vid, why] for vid, why in dict(progress.bad_examples).items()],
        "tracking": progress.tracking,
    }
    try:
        torch.save(state, path)
    except (OSError, RuntimeError) as err:
        raise _write_failed(path, err) from err
    return path


def _write_failed(path: Path, err: Exception) -> OSError:
    """torch.save's error on a full disk is "unexpected pos 704 vs 598" or "basic_ios::clear: iostream
    error": say which file, how much room its disk has, and what to do."""
    try:
        if path.is_file():
            path.unlink()  # a partial state must not be taken for a checkpoint
        free = f"{shutil.disk_usage(path.parent).free / 2**30:.1f} GiB free on its disk"
    except OSError:
        free = "its disk's free space unknown"
    return OSError(f"could not write the checkpoint state {path} ({first_line(err)}); {free}. If that disk is full, free space "
                   "there or set TMPDIR to a larger disk (a checkpoint is written to the temp dir before Ray Train "
                   "copies it to storage)")


def restore(folder: Path, *, model: nn.Module, optimizer, scheduler, rank: int = 0, world: int = 1) -> Progress:
    """Loads `folder/state.pt` into the model, optimiser, scheduler and this rank's RNG; returns the rest.

    With as many ranks as wrote the checkpoint each rank takes back its own RNG; otherwise (or from a
    checkpoint with rank 0's only) every rank takes rank 0's.
    """
    state = load_state(Path(folder) / STATE_FILE)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    by_rank = state.get("rng_by_rank") or [{"torch": state["torch_rng"]}]
    own = by_rank[rank] if len(by_rank) == world else {"torch": state["torch_rng"]}
    torch.set_rng_state(own["torch"])
    if own.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(own["cuda"])
    position = state.get("position")
    return Progress(
        epochs_done=int(state["epoch"]) + 1,
        metrics=dict(state.get("metrics", {})),
        bad_examples=[(str(vid), str(why)) for vid, why in state.get("bad_examples", [])],
        tracking=state.get("tracking"),
        position=dict(position) if position else None,
        epoch_stats=state.get("epoch_stats") if position else None,
    )


def rng_state() -> dict:
    """This process's torch RNG, and the current CUDA device's when there is one."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def stats_state(stats: EpochStats) -> dict:
    """An epoch's statistics so far as plain values (loadable with `weights_only=True`)."""
    return {"loss_sum": stats.loss * stats.seen, "seen": stats.seen, "bad": [[v, w] for v, w in stats.bad],
            "extras_sum": dict(stats.extras_sum), "data_time_s": stats.data_time_s,
            "step_time_s": stats.step_time_s, "seconds": stats.seconds, "steps": stats.steps}


def carried_stats(progress: Progress, rank: int, world: int) -> EpochStats | None:
    """This rank's share of the statistics a checkpoint inside an epoch carried (None without one).

    With the ranks that wrote it, each rank takes its own; with another number of ranks rank 0 takes
    the sums (times: the slowest rank's) and the others none, so the epoch's totals stay right.
    """
    if not progress.position or not progress.epoch_stats:
        return None
    parts = progress.epoch_stats
    if len(parts) == world:
        parts = [parts[rank]]
    elif rank != 0:
        return None
    seen = sum(int(p["seen"]) for p in parts)
    extras: dict = {}
    for p in parts:
        for key, value in p["extras_sum"].items():
            extras[key] = extras.get(key, 0.0) + float(value)
    return EpochStats(
        loss=sum(float(p["loss_sum"]) for p in parts) / max(1, seen), seen=seen,
        bad=[(str(v), str(w)) for p in parts for v, w in p["bad"]], extras_sum=extras,
        data_time_s=max(float(p["data_time_s"]) for p in parts),
        step_time_s=max(float(p["step_time_s"]) for p in parts),
        seconds=max(float(p["seconds"]) for p in parts), steps=int(progress.position["step"]),
    )


class CheckpointSchedule:
    """When to checkpoint inside an epoch: at the same step on every rank.

    `every_steps`: when the epoch's step count is a multiple of it (a count every rank shares).
    `every_minutes`: the ranks' clocks differ, so rank 0's decides. It is read at check steps only, where
    rank 0 broadcasts (save now?, steps to the next check); the next check comes about `check_s` of
    measured step time later, so the ranks meet a few times a minute instead of draining a GPU's queue
    at every step. A checkpoint is then at most `check_s` late.

    Args:
        every_steps: steps between checkpoints (0: off).
        every_minutes: minutes between checkpoints, counted from the last checkpoint of any kind (0: off).
        device: where the broadcast tensor lives (the process group's device).
        check_s: seconds of steps between checks; at most a tenth of the interval.
        clock: seconds (a test's fake clock).
    """

    def __init__(self, *, every_steps: int = 0, every_minutes: float = 0.0, device=None, check_s: float = 10.0,
                 clock=time.monotonic):
        self.every_steps = int(every_steps)
        self.every_s = float(every_minutes) * 60.0
        self.check_s = min(check_s, self.every_s / 10) if self.every_s else check_s
        self.device = device
        self.clock = clock
        self._since = self._last_check = clock()
        self._countdown, self._steps = 1, 0  # the first check after the first step measures its time

    def due(self, step: int) -> bool:
        """Whether to checkpoint after `step` (the epoch's step count). Every rank calls it after every
        step that is not its epoch's last, in the same order."""
        if self.every_steps and step % self.every_steps == 0:
            return True
        if not self.every_s:
            return False
        self._steps += 1
        self._countdown -= 1
        if self._countdown > 0:
            return False
        now = self.clock()
        per_step = max(1e-6, (now - self._last_check) / self._steps)
        save, next_in = _from_rank0([float(now - self._since >= self.every_s),
                                     float(min(100_000, max(1, round(self.check_s / per_step))))], self.device)
        self._countdown, self._steps, self._last_check = int(next_in), 0, now
        return bool(save)

    def saved(self) -> None:
        """A checkpoint (of any kind) was written: the minutes count from now."""
        self._since = self.clock()


def _from_rank0(values: list[float], device) -> list[float]:
    """Rank 0's `values` on every rank (the values themselves without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


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
