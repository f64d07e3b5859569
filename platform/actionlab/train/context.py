"""What the driver resolves once for a run and every Ray Train worker reads: data locations and run identity."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class RunContext:
    """Data paths resolved on the driver (absolute local paths or URIs) and the run's identity.

    Crosses the Ray boundary as a dict (`to_dict` / `from_dict`), like the config.
    """

    manifest: str
    val_manifest: str
    root: str
    classes: tuple[str, ...]
    dataset: str  # the dataset's name (tags, default run name)
    cache_dir: str  # local read-through cache for remote videos
    val_split: str = "val"
    run_id: str = ""  # the MLflow run rank 0 writes to
    run_name: str = ""

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, values: dict) -> RunContext:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"run context: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**{**values, "classes": tuple(values["classes"])})
