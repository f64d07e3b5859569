"""Official checkpoints in our names: the key map behind every method's `checkpoint_filter_fn`.

timm keeps each model's `checkpoint_filter_fn(state_dict, model)` in the model's file; so does every
method here that has released checkpoints. It is a `CheckpointFilter`: the official layout written
down as ordered regex rules (every official key must match exactly one, or be listed as having no
counterpart), the few structural changes a method needs (`prepare`), and the params to blame when a
shape differs. Called like timm's, it turns an official state dict (its training wrapper and
`module.` prefixes already removed: reading files is the platform's job) into a state dict the built
model loads strictly. `WorkloadSpec.checkpoint_filter_fn` finds a method's filter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# Where training scripts nest the state dict inside the file they save, tried in order.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the method or the build; the message names the fix."""


class UnmappedKeys(CheckpointError):
    """Official keys no rule maps: another method's checkpoint, or another architecture option."""

    def __init__(self, unmapped: list[str], *, num_keys: int, paper: str):
        self.unmapped = unmapped
        self.num_keys = num_keys
        super().__init__(f"{len(unmapped)} of {num_keys} keys are not {paper} names, e.g. {unmapped[:4]}")


class BuildMismatch(CheckpointError):
    """The renamed checkpoint and the built model differ in keys or shapes (the message names the param)."""


@dataclass(frozen=True)
class CheckpointFilter:
    """How one method's official state dict maps onto its module; call it as timm's `checkpoint_filter_fn`.

    Attributes:
        paper: the method and where its checkpoints come from, as the imported model's source names it.
        rules: (official-key regex, our-key template) in order; the first rule whose regex matches the
            whole key renames it (`re.fullmatch(...).expand(template)`, then `{sN}` -> N - 1 for official
            1-based stage numbers); template None drops the key (a tensor with no counterpart).
        hints: (our-key regex, param) pairs: a shape that differs on a matching key most likely means
            that param differs between the checkpoint and the build (frames, classes, widths).
        key_hints: the same for keys one side lacks (depth: blocks that exist on one side only);
            `hints` when empty.
        prepare: a whole-dict step after renaming, `(state, model) -> state` (e.g. fusing TAM's convs).
        signature: regexes of official keys only this method's checkpoints have (so that another
            method's import can name this one).
        nested: where the method's training script nests the state dict in the file it saves.
    """

    paper: str
    rules: tuple
    hints: tuple = ()
    key_hints: tuple = ()
    prepare: Callable[[dict, nn.Module], dict] | None = None
    signature: tuple = ()
    nested: tuple = NESTED_KEYS

    def __call__(self, state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """An official state dict -> one `model` loads strictly (same keys, shapes and dtypes).

        Raises:
            UnmappedKeys: official keys that no rule maps.
            BuildMismatch: keys or shapes that differ from `model`'s; the message names the likely param.
            CheckpointError: the method's `prepare` refuses the checkpoint.
        """
        ours = self.rename(state_dict)
        if self.prepare is not None:
            ours = self.prepare(ours, model)
        model_state = model.state_dict()
        self.check(ours, model_state)
        return {k: ours[k].to(model_state[k].dtype) for k in model_state}

    def rename(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Official keys -> ours by `rules`; every key must match a rule (else `UnmappedKeys`)."""
        rules = [(re.compile(pattern), template) for pattern, template in self.rules]
        out, unmapped = {}, []
        for key, value in state_dict.items():
            for regex, template in rules:
                m = regex.fullmatch(key)
                if m:
                    if template is not None:
                        out[_expand(m, template)] = value
                    break
            else:
                unmapped.append(key)
        if unmapped:
            raise UnmappedKeys(unmapped, num_keys=len(state_dict), paper=self.paper)
        return out

    def check(self, ours: dict, model_state: dict) -> None:
        """Same keys, same shapes as the built model, else one `BuildMismatch` naming both sides and the param."""
        missing = sorted(set(model_state) - set(ours))
        extra = sorted(set(ours) - set(model_state))
        shapes = [(k, tuple(ours[k].shape), tuple(model_state[k].shape))
                  for k in sorted(set(ours) & set(model_state)) if ours[k].shape != model_state[k].shape]
        if not (missing or extra or shapes):
            return
        params = []
        for keys, hints in (([k for k, _, _ in shapes], self.hints), (missing + extra, self.key_hints or self.hints)):
            for key in keys:
                for pattern, param in hints:  # the first matching hint of each key
                    if re.search(pattern, key):
                        if param not in params:
                            params.append(param)
                        break
        parts = []
        if shapes:
            parts.append("shapes differ (checkpoint vs build): " + "; ".join(f"{k} {a} vs {b}" for k, a, b in shapes[:4]))
        if missing:
            parts.append(f"the build has {len(missing)} tensors the checkpoint lacks, e.g. {missing[:4]}")
        if extra:
            parts.append(f"the checkpoint has {len(extra)} tensors the build lacks, e.g. {extra[:4]}")
        hint = (f"; the checkpoint was probably trained with a different {' / '.join(params)}: set it to the "
                "checkpoint's value") if params else "; check the workload params (--set) against the release"
        raise BuildMismatch("; ".join(parts) + hint)

    def recognises(self, state_dict: dict) -> bool:
        """Whether `state_dict` has a key only this method's official checkpoints have."""
        return any(re.search(s, k) for s in self.signature for k in state_dict)


def _expand(m: re.Match, template: str) -> str:
    """`m.expand(template)`, then `{sN}` -> N - 1 (official 1-based stage numbers -> our 0-based indices)."""
    return re.sub(r"\{s(\d+)\}", lambda s: str(int(s.group(1)) - 1), m.expand(template))


def block_rules(official: str, ours: str, parts: tuple) -> tuple:
    """Rules for a stack of blocks: `<official>.N.<part>` -> `<ours>.N.<target>` for each (part, target).

    `official` is a regex prefix; each target's `{}` placeholders take the part's regex groups in order.
    """
    rules = []
    for part, target in parts:
        groups = [rf"\{i}" for i in range(2, 2 + target.count("{}"))]  # group 1 is the block index
        rules.append((rf"{official}\.(\d+)\.{part}", rf"{ours}.\1." + target.format(*groups)))
    return tuple(rules)
