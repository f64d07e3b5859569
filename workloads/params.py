"""The one validator of frozen config dataclasses: a workload's Params and the platform's `Config` alike.

`from_mapping(cls, values)` builds `cls` from a mapping (a recipe, `--set` overrides, a recorded
`meta.json`), checking every key against the field's annotation: unknown keys name the nearest field,
`Literal[...]` fields take only their choices, numbers stay inside a range declared on the field
(`bounded`), nested dataclasses are built the same way. Errors name the dotted key, the value and the
fix. Lives in `workloads` (pure Python) so the workloads and `actionlab.config` share it.

Choice lists are declared once, as a `Literal` on the field; a module that also needs the tuple
derives it with `typing.get_args`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

RANGE = "range"  # field metadata key: (lo, hi), either None for unbounded, both inclusive


class ParamsError(ValueError):
    """A key or value that does not fit a config dataclass."""


def closest(name: Any, options) -> str | None:
    """The option most like `name` (difflib's ratio of at least 0.5), or None."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.5)
    return close[0] if close else None


def nearest(name: str, options) -> str:
    """The hint an error about an unknown `name` ends with: "did you mean 'x'? known: [...]"."""
    close = closest(name, options)
    return (f"did you mean '{close}'? " if close else "") + f"known: {sorted(str(o) for o in options)}"


def bounded(default: float, *, lo: float | None = None, hi: float | None = None):
    """A dataclass field with `default` whose value must lie in [lo, hi] (None: unbounded that side)."""
    return dataclasses.field(default=default, metadata={RANGE: (lo, hi)})


def choices(annotation: Any) -> tuple:
    """The values of a `Literal[...]` annotation (or of `X | None` around one), as a tuple."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is not Literal:
        raise TypeError(f"{annotation!r} is not a Literal of choices")
    return typing.get_args(annotation)


def from_mapping(cls: type, values: dict | None, *, path: str = "", noun: str = "key", owner: str = "") -> Any:
    """`cls` built from `values` (missing keys take the field defaults), every key and value checked.

    Args:
        cls: a dataclass.
        values: field name -> value; a nested dataclass field takes a mapping (or an instance).
        path: the dotted key of `values` itself, prefixed to the keys in errors ("optim" -> "optim.lr").
        noun: what a key is called in errors ("config key", "parameter").
        owner: who the keys belong to, named in errors ("workload 'tsm'").

    Raises:
        ParamsError: an unknown key (with the nearest name), a value of the wrong type, a choice not
            among the `Literal`'s (with the nearest choice), or a number outside its declared range.
    """
    if not isinstance(values, dict):
        raise ParamsError(f"{_where(path, noun, owner) if path else cls.__name__}: expected a mapping of "
                          f"{cls.__name__} keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{path}.{key}" if path else key
        if key not in fields:
            belongs = f" for {owner}" if owner else ""
            raise ParamsError(f"unknown {noun} '{dotted}'{belongs}; {nearest(key, fields)}")
        kwargs[key] = check_value(value, hints[key], fields[key], path=dotted, noun=noun, owner=owner)
    return cls(**kwargs)


def check(instance: Any, *, noun: str = "key", owner: str = "") -> Any:
    """`instance` (a dataclass) with every field checked as `from_mapping` checks a mapping.

    A ready Params instance travels without a dict round trip; this is its check. Values converted
    losslessly (a list for a tuple field, an int for a float one) come back converted.
    """
    hints = typing.get_type_hints(type(instance))
    changes = {}
    for f in dataclasses.fields(instance):
        if not f.init:
            continue
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            checked = check(value, noun=noun, owner=owner)
        else:
            checked = check_value(value, hints[f.name], f, path=f.name, noun=noun, owner=owner)
        if checked is not value:
            changes[f.name] = checked
    return dataclasses.replace(instance, **changes) if changes else instance


def check_value(value: Any, annotation: Any, field: dataclasses.Field | None = None, *, path: str,
                noun: str = "key", owner: str = "") -> Any:
    """`value` checked against a field's annotation and declared range, converted only where lossless."""
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return check(value, noun=noun, owner=owner)
        return from_mapping(annotation, value, path=path, noun=noun, owner=owner)
    value = _coerce(value, annotation, _where(path, noun, owner))
    lo, hi = (field.metadata.get(RANGE) if field is not None else None) or (None, None)
    if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        span = f"[{lo}, {hi}]" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise ParamsError(f"{_where(path, noun, owner)}: {value!r} is out of range; it must be {span}")
    return value


def _where(path: str, noun: str, owner: str) -> str:
    return f"{owner} {noun} '{path}'" if owner else path


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare on / off / yes / no as a bool
            spelled = [c for c in (("on", "yes", "true") if value else ("off", "no", "false")) if c in args]
            value = spelled[0] if len(spelled) == 1 else value
        if isinstance(value, str) and value in args:
            return value
        close = closest(value, args)
        hint = f"; did you mean {close!r}?" if close else ""
        raise ParamsError(f"{where}: {value!r} is not one of {list(args)}{hint}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif annotation is tuple or origin is tuple:
        if isinstance(value, tuple):
            return value
        if isinstance(value, list):
            return tuple(value)
    elif annotation is dict or origin is dict:
        if isinstance(value, dict):
            return value
    name = getattr(annotation, "__name__", str(annotation))
    raise ParamsError(f"{where}: expected {name}, got {value!r} ({type(value).__name__})")
