"""Golden fixture for svmix: SV-Mix's selection module (the official `MB_st`) and the clips it mixes.

Official: https://github.com/ty-97/Seletive-Volume-Mix at c2f7e0bad7b89be7dc916522c200cf6604c7c669,
`SV-Mix/pytorchvideo/transform/maskmotioncut.py` `MB_st(in_channel=16, inter_channel=8)` (the CNN layout,
`MB_st(2048, 1024)`, at a small width). The official trainer saves the module with fvcore's checkpointer
(`PtCheckpointer(..., mix_bloc_s=unwrap_model(mix_block_s), model_ofl=...)` in `engine/defaults.py`): a
`model_final.pth` holding {"model", "mix_bloc_s", "model_ofl", "iteration", ...}; the fixture writes only
`mix_bloc_s` (and `iteration`), the part our loader reads. `weights import` has no SV-Mix entry (the module
only trains): `golden.LOADERS["svmix"]` builds our SelectionModule through `selection_module_from_official`.

Both sides get the same features, lambda and partner permutation (no sampling), in both modes:
spatial (`use_cutmix=True`, attention among the cells of a frame) and temporal (among the frames of a
clip). The official mixed clip is `_mix_batch`'s `x_ol` formula (x * mask[:, 0] + x[index] * mask[:, 1]),
applied here to the official mask, since `_mix_batch` itself needs the whole trainer and a GPU.

Regenerate (the trainer-only imports of maskmotioncut.py, `pytorchvideo.model`, `.utils.comm` and
`.config`, are stubbed; the module's forward uses none of them):

    python scripts/golden/svmix.py --official /tmp/official/Seletive-Volume-Mix

No two tensors of MB_st share a shape (query (8, 17), value (1, 17) and their biases), so there is no
pair a converter could confuse by shape: the fixture names no swap, and the test checks that claim.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

CHANNELS, QUERY_DIM = 16, 8
B, T, SIZE_PX = 3, 8, 24  # clip (B, T, C, H, W)
T_FEAT, GRID = 4, 4  # feature map (B, D, T', h, w): 2 frames and 6x6 px per cell
LAM = 0.37  # inside (0.08, 0.92): the learned mask, not the constant one
PERM = (2, 0, 1)
MODULE = "SV-Mix/pytorchvideo/transform/maskmotioncut.py"


def official_module(clone: Path):
    """`maskmotioncut.py` loaded from the clone, its trainer-only imports stubbed."""
    for name in ("pytorchvideo", "pytorchvideo.model", "pytorchvideo.utils", "pytorchvideo.config"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["pytorchvideo.model"].build_model = None
    sys.modules["pytorchvideo.utils"].comm = None
    sys.modules["pytorchvideo.config"].kfg = None
    spec = importlib.util.spec_from_file_location("maskmotioncut", clone / MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0])
    clone = args.official.resolve()
    model = official_module(clone).MB_st(in_channel=CHANNELS, inter_channel=QUERY_DIM)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "input": common.clip((B, T, 3, SIZE_PX, SIZE_PX)),
        "feats": torch.randn((B, CHANNELS, T_FEAT, GRID, GRID), generator=gen),  # (B, D, T', h, w)
        "lam": torch.tensor(LAM, dtype=torch.float64),
        "perm": torch.tensor(PERM),
    }

    def official_forward(model, inputs):
        clips, perm, lam = inputs["input"], inputs["perm"], float(inputs["lam"])
        feature_map = inputs["feats"].transpose(1, 2)  # official layout (b, t_f, c_f, h_f, w_f)
        scale = (SIZE_PX // GRID, T // T_FEAT)  # (h // h_f, t // t_f), as `_mix_batch` passes it
        x = clips.reshape(B * T, 3, SIZE_PX, SIZE_PX)  # frames of a clip side by side, as `_mix_batch` has them
        x_partner = clips[perm].reshape(B * T, 3, SIZE_PX, SIZE_PX)
        out = {}
        for mode in ("spatial", "temporal"):
            mask, _ = model(feature_map, lam, perm, scale, use_cutmix=mode == "spatial")  # (B*T, 2, H, W)
            m_b = mask[:, 1].reshape(B, T, SIZE_PX, SIZE_PX)
            out[f"m_b_{mode}"] = m_b[:, :: scale[1], :: scale[0], :: scale[0]]  # (B, T', h, w): one per cell
            mixed = x * mask[:, 0:1] + x_partner * mask[:, 1:2]
            out[f"mixed_{mode}"] = mixed.reshape(B, T, 3, SIZE_PX, SIZE_PX)
        return out

    common.write_golden(
        "svmix",
        model=model,
        official={"repo": "ty-97/Seletive-Volume-Mix", "commit": common.commit_of(clone),
                  "model": f"{MODULE}: MB_st(in_channel={CHANNELS}, inter_channel={QUERY_DIM}); lambda {LAM}, "
                           f"index {list(PERM)}, features (b, t_f, c_f, h_f, w_f) = ({B}, {T_FEAT}, {CHANNELS}, "
                           f"{GRID}, {GRID}), clips {T}x{SIZE_PX} px"},
        checkpoint={"file": "model_final.pth", "wrapper": {"mix_bloc_s": common.golden.STATE, "iteration": 29999},
                    "prefix": ""},
        imports={},
        load="svmix",
        inputs=inputs,
        official_forward=official_forward,
        forward="svmix_selection",
        swap=(),
        notes="m_b_*: the partner's weight per feature cell (official mask[:, 1]); mixed_*: the mixed clip",
    )


if __name__ == "__main__":
    main()
