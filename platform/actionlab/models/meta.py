"""What a saved model records beside its weights (`meta.json`): the workload with every Params value,
the class names and the input format (`workloads.InputFormat`: sampling, clip shape, normalisation), so
that loading rebuilds the network that was trained and feeds it what it was trained on.

A model is rebuilt from the recorded values, never from today's defaults: a changed default does not
change a saved model. A recorded value the current code cannot take (a parameter since removed or
renamed) is refused with the key, the workload and what to do. Checkpoints written before every value
was recorded hold only the overrides; their missing values take today's defaults, and a log line
says which.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when read: `workloads` brings torch and timm, which tracking's users may not need
    from workloads.registry import InputFormat

log = logging.getLogger(__name__)

_OPTIONAL_KEYS = {"snippet_frames": 1}  # recorded since snippet sampling; older models sampled 1 frame per segment


class ModelMetaError(ValueError):
    """A saved model whose record the current code cannot rebuild."""


@dataclass(frozen=True)
class ModelMeta:
    """The record of a saved model. `params` is the workload's Params dataclass with every value."""

    workload: str
    params: Any
    classes: tuple[str, ...]
    preprocessing: InputFormat  # what the model eats, as trained
    source: dict = field(default_factory=dict)  # where imported weights came from (official checkpoints)
    actionlab_version: str = ""  # the version that wrote the record ("" before it was recorded)

    def to_json(self) -> dict:
        """The `meta.json` mapping: flat (the input format's fields beside `workload`), as older readers
        expect, with `params` holding every value."""
        out = {
            "workload": self.workload,
            "params": dataclasses.asdict(self.params),
            "classes": list(self.classes),
            **dataclasses.asdict(self.preprocessing),
            "actionlab_version": self.actionlab_version,
        }
        out["mean"], out["std"] = list(out["mean"]), list(out["std"])
        if self.source:
            out["source"] = dict(self.source)
        return out

    @classmethod
    def from_json(cls, values: dict, *, where: str) -> ModelMeta:
        """Reads a `meta.json` mapping; `where` names the file in errors and log lines.

        Raises:
            ModelMetaError: a key is missing, the workload is unknown, or a recorded parameter does not
                fit the workload's Params in this code.
        """
        from workloads.registry import InputFormat

        required = [f.name for f in dataclasses.fields(InputFormat) if f.name not in _OPTIONAL_KEYS]
        missing = [k for k in ("workload", "params", "classes", *required) if k not in values]
        if missing:
            raise ModelMetaError(f"{where}: no {missing} recorded; expected a meta.json written by actionlab")
        version = str(values.get("actionlab_version") or "")
        params = recorded_params(values["workload"], values["params"], where=where, version=version)
        recorded = {k: values[k] for k in required}
        recorded.update({k: int(values.get(k, default)) for k, default in _OPTIONAL_KEYS.items()})
        try:
            fmt = InputFormat(**recorded)
        except (ValueError, TypeError) as err:
            raise ModelMetaError(f"{where}: the recorded input format does not hold: {err}") from None
        return cls(
            workload=values["workload"],
            params=params,
            classes=tuple(values["classes"]),
            preprocessing=fmt,
            source=dict(values.get("source") or {}),
            actionlab_version=version,
        )


def _written_by(version: str) -> str:
    return f"actionlab {version}" if version else "an older actionlab (it recorded no version)"


def recorded_params(workload: str, recorded: dict, *, where: str, version: str = "") -> Any:
    """The Params a checkpoint was trained with, rebuilt from its record.

    Raises:
        ModelMetaError: the workload or one of the recorded keys no longer exists, or a value has
            another type than the field takes now.
    """
    from workloads import get_workload
    from workloads.registry import nested_workload_fields

    try:
        spec = get_workload(workload)
    except KeyError as err:
        raise ModelMetaError(
            f"{where}: recorded workload '{workload}' is not in this code ({err.args[0]}). It was written by "
            f"{_written_by(version)}: load it with that version"
        ) from None
    if not isinstance(recorded, dict):
        raise ModelMetaError(f"{where}: recorded params of workload '{workload}' are not a mapping: {recorded!r}")
    try:
        params = spec.resolve_params(recorded)
    except (ValueError, KeyError) as err:
        raise ModelMetaError(
            f"{where}: this code cannot rebuild the recorded workload '{workload}': {err.args[0]}. Its "
            f"{spec.params_cls.__name__} changed since the checkpoint was written by {_written_by(version)}: "
            f"load it with that version, or retrain (or re-import with `actionlab weights import`) with this one"
        ) from None
    defaulted = sorted(f.name for f in dataclasses.fields(spec.params_cls) if f.name not in recorded)
    for workload_field, params_field in nested_workload_fields(spec.params_cls):
        inner = recorded.get(params_field) or {}
        inner_cls = get_workload(getattr(params, workload_field)).params_cls
        defaulted += sorted(f"{params_field}.{f.name}" for f in dataclasses.fields(inner_cls) if f.name not in inner)
    if defaulted:
        log.warning(
            "%s records no value for %s params %s (written before every value was recorded): they take "
            "today's defaults, which may differ from the ones it was trained with",
            where, workload, defaulted,
        )
    return params
