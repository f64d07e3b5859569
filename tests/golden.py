"""Golden outputs from the official code: the fixtures of `tests/fixtures/golden/<method>/`.

A fixture holds what the official code computed, not its weights: the weights follow a rule from the
tensor's name (`generated_tensor`), so a ResNet-50 costs its key list, not 100 MB. Each folder has

- `golden.json`: the official repository and commit, the model as built there, how its checkpoint is
  laid out (`wrapper`, `prefix`, file name), every state-dict entry in the official order with its shape,
  the `weights import` arguments, the forward adapter and the pair of tensors `swap` exchanges;
- `io.safetensors`: `input` (the clip as actionlab feeds it, (B, T, C, H, W)), `output.<name>` (what the
  official model returned), and `state.<key>` for the entries kept as they were (integer buffers, and
  any tensor the regeneration script chose to keep).

`official_checkpoint` writes the checkpoint the official code would have saved; the tests import it
with `actionlab weights import`'s library function and compare the loaded model's outputs with the
golden ones. `scripts/golden/` regenerates a fixture from a clone of the official repository.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
STATE = "<STATE>"  # where the state dict sits in `wrapper`
RTOL = 1e-5  # max |ours - official| over max |official|, per output


def generated_tensor(key: str, shape: list, dtype: str) -> torch.Tensor:
    """The weight for `key`: a fixed function of its name and shape (NumPy's PCG64, stable across
    releases), scaled so a deep network's activations stay in range: conv and linear weights at
    1/sqrt(fan-in), norm scales and BN running variances in [0.5, 1.5], biases and running means
    around 0 (non-trivial BN statistics)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    leaf = key.rsplit(".", 1)[-1]
    shape = tuple(shape)
    if leaf == "running_var" or (len(shape) <= 1 and leaf in ("weight", "gamma", "scale")):
        values = rng.uniform(0.5, 1.5, shape)
    elif leaf == "running_mean" or len(shape) <= 1:
        values = rng.normal(0.0, 0.1, shape)
    else:
        values = rng.normal(0.0, 1.0 / math.sqrt(max(1, math.prod(shape[1:]))), shape)
    return torch.from_numpy(values).to(getattr(torch, dtype))


@dataclass(frozen=True)
class Golden:
    method: str
    folder: Path
    spec: dict
    tensors: dict

    @property
    def checkpoint_name(self) -> str:
        return self.spec["checkpoint"]["file"]

    def official_state(self, *, swap: bool = False) -> dict:
        """The official state dict, keys as the official model names them (no prefix); `swap` exchanges
        the two tensors of `spec["swap"]` (same shape), as a mis-mapped converter would."""
        state = {}
        for key, shape, dtype, how in self.spec["state"]:
            state[key] = self.tensors[f"state.{key}"] if how == "stored" else generated_tensor(key, shape, dtype)
        if swap:
            a, b = self.spec["swap"]
            state[a], state[b] = state[b], state[a]
        return state

    def write_checkpoint(self, folder: Path, *, swap: bool = False) -> Path:
        """The checkpoint file as the official code saves it (its wrapper, key prefix and file name)."""
        prefix = self.spec["checkpoint"].get("prefix", "")
        state = {prefix + k: v for k, v in self.official_state(swap=swap).items()}
        path = Path(folder) / self.checkpoint_name
        torch.save(_fill(self.spec["checkpoint"]["wrapper"], state), path)
        return path

    @property
    def outputs(self) -> dict:
        return {k.removeprefix("output."): v for k, v in self.tensors.items() if k.startswith("output.")}


def _fill(template, state: dict):
    if template == STATE:
        return state
    if isinstance(template, dict):
        return {k: _fill(v, state) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, state) for v in template]
    return template


def load(method: str) -> Golden:
    from safetensors.torch import load_file

    folder = GOLDEN / method
    return Golden(method, folder, json.loads((folder / "golden.json").read_text()),
                  load_file(str(folder / "io.safetensors")))


def methods() -> list[str]:
    return sorted(p.name for p in GOLDEN.iterdir() if (p / "golden.json").is_file()) if GOLDEN.is_dir() else []


def relative_error(ours: torch.Tensor, official: torch.Tensor) -> float:
    ours, official = ours.detach().double(), official.double()
    if ours.shape != official.shape:
        raise AssertionError(f"shape {tuple(ours.shape)} where the official output is {tuple(official.shape)}")
    return float((ours - official).abs().max() / official.abs().max().clamp_min(1e-12))


# How each method's imported model is run on the golden input: name -> fn(model, tensors) -> {output: tensor}.
# `logits` (the default) is model(input); a method whose official forward returns more (masks, features)
# registers its own adapter here, named by `forward` in its golden.json.
def _logits(model, tensors: dict) -> dict:
    return {"logits": model(tensors["input"])}


def _svmix_selection(module, tensors: dict) -> dict:
    """SV-Mix's selection module in both modes on fixed features, lambda and partners (no sampling):
    the partner's weight on the feature grid and the clip it mixes."""
    from workloads.svmix import mask_to_clip, mix_clips

    clips, perm, lam = tensors["input"], tensors["perm"], float(tensors["lam"])
    out = {}
    for mode in ("spatial", "temporal"):
        m_b = module(tensors["feats"], lam, perm, spatial=mode == "spatial")  # (B, T', h, w)
        out[f"m_b_{mode}"] = m_b
        out[f"mixed_{mode}"] = mix_clips(clips, mask_to_clip(m_b, clips.shape), perm)  # (B, T, C, H, W)
    return out


def _logits_with_official_flow(model, tensors: dict) -> dict:
    """HSAR's official forward computes Farneback flow with OpenCV; ours computes Lucas-Kanade (a
    documented deviation). The fixture keeps the official flow, fed here in place of ours, so the
    comparison covers the network and its weights, not the flow algorithm."""
    flow = tensors["flow"]

    def official(module, args, ours):
        if ours.shape != flow.shape:
            raise AssertionError(f"motion input {tuple(ours.shape)} where the official flow is {tuple(flow.shape)}")
        return flow.to(ours)

    handle = model.motion.register_forward_hook(official)
    try:
        return {"logits": model(tensors["input"])}
    finally:
        handle.remove()


def _noise_free_gumbel_softmax(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
    """`F.gumbel_softmax` with the Gumbel noise at zero (same straight-through output)."""
    soft = (logits / tau).softmax(dim)
    if not hard:
        return soft
    index = soft.max(dim, keepdim=True)[1]
    return torch.zeros_like(logits).scatter_(dim, index, 1.0) - soft.detach() + soft


def _logits_and_masks(model, tensors: dict) -> dict:
    """AFNet: the logits and every navigation module's keep mask, stacked (blocks, B, T). The official
    evaluation gate is a hard Gumbel sample whose noise both codes draw at random, each its own way; the
    fixture has it at zero on both sides (its script shims the official sampler), so the same frames are
    kept exactly when the two gates compute the same logits."""
    with mock.patch.object(torch.nn.functional, "gumbel_softmax", _noise_free_gumbel_softmax):
        logits, masks = model.forward_with_masks(tensors["input"])
    return {"logits": logits, "masks": torch.stack(masks)}


ADAPTERS = {"logits": _logits, "svmix_selection": _svmix_selection,
            "hsar_official_flow": _logits_with_official_flow, "logits_and_masks": _logits_and_masks}


def _svmix_loader(golden: Golden, checkpoint) -> torch.nn.Module:
    from workloads.svmix import selection_module_from_official

    return selection_module_from_official(torch.load(checkpoint, map_location="cpu", weights_only=True))


def import_and_load(golden: Golden, checkpoint: Path, **params):
    """`weights import` of `checkpoint` with the fixture's arguments (`params` added), loaded back as a
    user loads a model (`folder.load_model`)."""
    from actionlab.models import folder, weights

    args = golden.spec["import"]
    out = weights.import_checkpoint(args["workload"], checkpoint, Path(checkpoint).parent / "model",
                                    num_classes=args["num_classes"], num_frames=args["num_frames"],
                                    params={**args.get("params", {}), **params},
                                    size_px=args.get("size_px", 224), resize_px=args.get("resize_px", 256))
    return folder.load_model(str(out)).model


def _import_with_text_embeddings(golden: Golden, checkpoint: Path):
    """SLLM's checkpoint holds the image side only: Text4Vis computes the class text embeddings with the
    CLIP text tower at start-up and passes them to the forward. `weights import` takes them as
    `text_embeddings_file`; the fixture keeps them as `text_embeddings`, written here beside the checkpoint."""
    from safetensors.torch import save_file

    text = Path(checkpoint).parent / "text_embeddings.safetensors"
    save_file({"text_embeddings": golden.tensors["text_embeddings"]}, str(text))
    return import_and_load(golden, checkpoint, text_embeddings_file=str(text))


# A fixture whose official code has no checkpoint that `weights import` reads (a module inside a
# method, such as SV-Mix's mixer) names its loader here: fn(golden, checkpoint_path) -> model.
LOADERS: dict = {"svmix": _svmix_loader, "sllm_text_embeddings": _import_with_text_embeddings}


def run_ours(model, golden: Golden) -> dict:
    with torch.no_grad():
        return ADAPTERS[golden.spec.get("forward", "logits")](model.eval(), golden.tensors)
