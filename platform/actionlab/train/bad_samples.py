"""Bad samples named on the console as training meets them (rank 0), and a per-cause summary.

The full list still goes to MLflow (`data/bad_samples.tsv`); this is what a person watching the run
sees: each distinct bad sample once, path and reason, the first time it is met, and at the end of
each epoch how many there are by cause.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

# The loader's batches carry (video, reason) without the dataset's `kind`; the cause is read back
# from the reason texts that actionlab.data writes (same names as BadSample/DecodeError kinds).
_CAUSES = (
    ("outside_root", re.compile(r"escapes the data root|not under the data root|under a local data root")),
    ("label", re.compile(r"\blabel -?\d+ is outside")),
    ("empty", re.compile(r"is empty \(0 bytes\)")),
    ("short", re.compile(r"frames but frame|manifest range ends|frame range start|frame count unknown|"
                         r"has no frames|requested frames|wanted frames decoded|frame \S+ is missing")),
    ("missing", re.compile(r"does not exist|download failed|folder has no|no such file", re.I)),
)


def cause(reason: str) -> str:
    """The kind of a bad sample from its reason: outside_root | label | empty | missing | short | corrupt."""
    for name, pattern in _CAUSES:
        if pattern.search(reason):
            return name
    return "corrupt"


class BadSampleLog:
    """Prints each distinct bad sample once (path and reason) and a per-cause summary per epoch.

    Only rank 0 prints; other ranks' bad samples reach it through the epoch's gather and are named
    then. Samples restored from a checkpoint were named by the attempt that met them and are not
    printed again.
    """

    def __init__(self, rank: int, *, already: list | tuple = ()):
        self.rank = rank
        self.named: dict[str, str] = {str(video): str(why) for video, why in already}

    def met(self, pairs: list) -> None:
        """Names the (video, reason) pairs not named before, as they are met."""
        for video, why in pairs:
            video, why = str(video), str(why)
            if video in self.named:
                continue
            self.named[video] = why
            self._write(f"bad sample {why if why.startswith(video) else f'{video}: {why}'}")

    def end_epoch(self, epoch: int, distinct: list, encounters: int) -> None:
        """Names what other ranks met, then `bad samples after epoch N: ...` by cause."""
        self.met(distinct)
        if not distinct:
            return
        by_cause = Counter(cause(str(why)) for _, why in distinct)
        causes = ", ".join(f"{name} {n}" for name, n in sorted(by_cause.items(), key=lambda kv: (-kv[1], kv[0])))
        self._write(
            f"bad samples after epoch {epoch}: {len(distinct)} distinct ({causes}); "
            f"{encounters} skipped this epoch; full list in MLflow data/bad_samples.tsv"
        )

    def _write(self, line: str) -> None:
        # Not print(): Ray Train tees print into its logger (every line twice).
        if self.rank == 0:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
