"""Where a clip's time goes: per-stage seconds, accumulated only while `bench data` profiles.

Off (the default) every call is one global lookup and returns at once, so the loaders pay nothing
measurable; on, each stage adds differences of the thread's CPU clock to a per-process total: CPU
time, as `bench data` counts clips per core, so a busy machine's preemption does not land in a stage
(0.4 us a reading, about 30 readings a clip).
"""

from __future__ import annotations

import time
from collections import Counter

# open: file and packet index; seek: container seeks; decode: the codec (decord: its RGB output too);
# convert: frames to arrays (RGB: swscale's whole-frame conversion; YUV: copying the planes);
# augment: crop, resize, flip (per clip); collate: the batch; normalise: colour conversion and
# normalisation of the batch (where training does it: the GPU when there is one).
STAGES = ("open", "seek", "decode", "convert", "augment", "collate", "normalise")

_totals: Counter | None = None


def start() -> None:
    """Turns profiling on in this process, from zero."""
    global _totals
    _totals = Counter()


def stop() -> dict[str, float]:
    """Turns profiling off; returns seconds per stage since `start`."""
    global _totals
    totals, _totals = _totals or Counter(), None
    return {stage: float(totals.get(stage, 0.0)) for stage in STAGES}


def clock() -> float:
    """Now, when profiling (else 0.0: no clock read)."""
    return time.thread_time() if _totals is not None else 0.0


def lap(stage: str, since: float) -> float:
    """Adds the time since `since` to `stage`; returns now (the next stage's start)."""
    if _totals is None:
        return 0.0
    now = time.thread_time()
    _totals[stage] += now - since
    return now
