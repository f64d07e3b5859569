"""Imports a model module of a PySlowFast-based clone (PySlowFast itself, UniFormer's `video_classification`)
on today's torch without its training stack, and builds its config from the official defaults and YAML.

Shimmed (stub modules in `sys.modules`, none of them used by a classification forward):
- the `slowfast`, `slowfast.models`, `slowfast.config` and `slowfast.utils` package `__init__`s are skipped
  (they import every model, the data loaders and the trainers); the modules themselves load from the clone;
- `slowfast.utils.logging` -> the standard `logging` (the official one needs simplejson, iopath, distributed);
- `fvcore.common.registry.Registry` -> a dict with `register()`; `fvcore.common.config.CfgNode` -> a dict with
  attribute access and yacs' YAML merge (strings read by `ast.literal_eval`, lists and tuples coerced to the
  default's type); `fvcore.nn.weight_init`, `detectron2.layers`, `pytorchvideo.layers.*` -> names that raise
  when used (ResNet/X3D init, detection heads, sync BN, Swish).
"""

from __future__ import annotations

import ast
import copy
import importlib
import logging
import sys
import types
from pathlib import Path

import yaml


class CfgNode(dict):
    """yacs' CfgNode as far as a config file and model builders use it."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def clone(self) -> "CfgNode":
        return copy.deepcopy(self)

    def merge_from_file(self, path) -> None:
        _merge(self, yaml.safe_load(Path(path).read_text()), str(path))

    def merge_from_list(self, pairs: list) -> None:
        for key, value in zip(pairs[0::2], pairs[1::2]):
            *parents, leaf = key.split(".")
            node = self
            for name in parents:
                node = node[name]
            _merge(node, {leaf: value}, key)


def _merge(node: CfgNode, update: dict, where: str) -> None:
    for key, value in update.items():
        if key not in node:
            raise KeyError(f"{where}: unknown config key {key}")
        if isinstance(node[key], CfgNode):
            _merge(node[key], value, where)
            continue
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass
        default = node[key]
        if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
            value = type(default)(value)
        node[key] = value


class _Registry(dict):
    def __init__(self, name):
        super().__init__()

    def register(self, obj=None):
        def add(cls):
            self[cls.__name__] = cls
            return cls

        return add(obj) if obj is not None else add

    def get(self, name):
        return self[name]


def _unused(module: str) -> types.ModuleType:
    """A module whose every name is a class that refuses to be built (the forward never builds it)."""
    mod = types.ModuleType(module)

    def missing(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def refuse(*args, **kwargs):
            raise RuntimeError(f"{module}.{name} is stubbed by scripts/golden/pyslowfast.py; "
                               "the forward must not use it")

        return type(name, (), {"__init__": refuse})

    mod.__getattr__ = missing
    return mod


def install(package_root: Path) -> None:
    """Makes `import slowfast.<sub>` load the clone's modules at `package_root` (the folder holding `slowfast/`)."""
    root = Path(package_root) / "slowfast"
    if not root.is_dir():
        raise SystemExit(f"{root}: no slowfast package there; pass the clone's root with --official")
    for name, folder in (("slowfast", root), ("slowfast.models", root / "models"), ("slowfast.config", root / "config"),
                         ("slowfast.utils", root / "utils")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(folder)]
        sys.modules[name] = mod
    log = types.ModuleType("slowfast.utils.logging")
    log.get_logger = logging.getLogger
    sys.modules["slowfast.utils.logging"] = log
    sys.modules["slowfast.utils"].logging = log
    for name in ("fvcore", "fvcore.common", "fvcore.nn", "detectron2", "pytorchvideo", "pytorchvideo.layers"):
        sys.modules[name] = types.ModuleType(name)
    registry = types.ModuleType("fvcore.common.registry")
    registry.Registry = _Registry
    config = types.ModuleType("fvcore.common.config")
    config.CfgNode = CfgNode
    sys.modules.update({"fvcore.common.registry": registry, "fvcore.common.config": config})
    for name in ("fvcore.nn.weight_init", "detectron2.layers", "pytorchvideo.layers.batch_norm",
                 "pytorchvideo.layers.swish"):
        sys.modules[name] = _unused(name)


def config(package_root: Path, yaml_file: Path, overrides: list) -> CfgNode:
    """The official defaults merged with `yaml_file` and then `overrides` ([key, value, ...])."""
    install(package_root)
    defaults = importlib.import_module("slowfast.config.defaults")
    cfg = defaults.get_cfg()
    cfg.merge_from_file(yaml_file)
    cfg.merge_from_list(overrides)
    return cfg
