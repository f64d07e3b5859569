"""Golden fixture for SLLM from the official code: https://github.com/xaCheng1996/SLLM at
eec5f32259f330ff56b66841ff1ba11c6f68703e (`modules/video_clip.py`: VideoCLIP, video_header; `clip/model.py`:
VisualTransformer).

    python scripts/golden/sllm.py --official /tmp/official/SLLM

Reduced model, same blocks: the CLIP ViT-B/16 visual tower (width 768, patch 16, 512-d projection) at 32 px
with 2 of its 12 blocks (both sides take the depth), the official 6-block "Transf" header and 3-block FFRes
(hard-coded there, kept), 8 sampled frames of which the even 4 are encoded (`num_feature` 4, the official
r = 0.5), 5 classes. The checkpoint is `train.py`'s `epoch_saving` dict (`model_state_dict`, not wrapped in
DataParallel). The logits come from `VideoCLIP.forward` (the training forward: exp(logit_scale) * cosine to
the class text embeddings); the text embeddings are a forward input there and `text_embeddings_file` here,
so the fixture keeps them (`text_embeddings`) and the `sllm_text_embeddings` loader of `tests/golden.py`
hands them to the import.

No shims: `clip/model.py` and `modules/video_clip.py` are loaded from their files, so `clip/__init__.py`
(tokenizer, ftfy, torchvision) is never imported. `video_header` reads only shapes from the CLIP state
dict (text width 512, context 77); the script passes empty tensors of those shapes.
"""

from __future__ import annotations

import importlib.util
import types

import torch
from common import clip, commit_of, parse_args, write_golden

NUM_FRAMES, SIZE_PX, NUM_CLASSES, DEPTH = 8, 32, 5, 2
WIDTH, PATCH, EMBED_DIM = 768, 16, 512


def _module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    args = parse_args(__doc__)
    clip_model = _module(args.official / "clip" / "model.py", "sllm_clip_model")
    video_clip = _module(args.official / "modules" / "video_clip.py", "sllm_video_clip")
    torch.manual_seed(0)
    visual = clip_model.VisualTransformer(input_resolution=SIZE_PX, patch_size=PATCH, width=WIDTH, layers=DEPTH,
                                          heads=WIDTH // 64, output_dim=EMBED_DIM)
    text_shapes = {"text_projection": torch.empty(EMBED_DIM, EMBED_DIM), "positional_embedding": torch.empty(77, EMBED_DIM),
                   "token_embedding.weight": torch.empty(1, EMBED_DIM), "ln_final.weight": torch.empty(EMBED_DIM)}
    header = video_clip.video_header("Transf", text_shapes)
    clip_like = types.SimpleNamespace(visual=visual, logit_scale=torch.nn.Parameter(torch.ones([])))
    model = video_clip.VideoCLIP(clip_like, header, NUM_FRAMES // 2, True)

    x = clip((2, NUM_FRAMES, 3, SIZE_PX, SIZE_PX))
    text = torch.randn(NUM_CLASSES, EMBED_DIM, generator=torch.Generator().manual_seed(1))

    def official_forward(m, inputs):
        clips = inputs["input"]
        kept = clips[:, 0::2].flatten(0, 1)  # (B*4, C, H, W): frames 0, 2, 4, 6 (the dataset's `process_data`)
        dropped = clips[:, 1:-1:2].flatten(0, 1)  # (B*3, C, H, W): frames 1, 3, 5 (its `restoration_data`)
        logits, _, _ = m(kept, inputs["text_embeddings"], dropped)
        return {"logits": logits}

    write_golden(
        "sllm",
        model=model,
        official={"repo": "xaCheng1996/SLLM", "commit": commit_of(args.official),
                  "model": f"modules/video_clip.py VideoCLIP(visual=clip/model.py VisualTransformer({SIZE_PX}, {PATCH}, "
                           f"{WIDTH}, layers={DEPTH}, heads={WIDTH // 64}, output_dim={EMBED_DIM}), "
                           f"video_header('Transf'), n_seg={NUM_FRAMES // 2}, use_restoration=True)"},
        checkpoint={"file": "model_best.pt", "wrapper": {"epoch": 0, "model_state_dict": "<STATE>",
                                                         "optimizer_state_dict": {"state": {}, "param_groups": []}},
                    "prefix": ""},
        imports={"workload": "sllm", "num_classes": NUM_CLASSES, "num_frames": NUM_FRAMES, "size_px": SIZE_PX,
                 "params": {"backbone": "vit_base_patch16_clip_quickgelu_224", "img_size_px": SIZE_PX,
                            "backbone_depth": DEPTH, "drop_rate": 0.5}},
        inputs={"input": x, "text_embeddings": text},
        official_forward=official_forward,
        # The header's and FFRes' first blocks: both `resblocks.0` of a 512-wide CLIP transformer.
        swap=("fusion_model.transformer.resblocks.0.attn.out_proj.weight", "restore_model.resblocks.0.attn.out_proj.weight"),
        load="sllm_text_embeddings",
        notes="text_embeddings: the (classes, 512) class text embeddings VideoCLIP.forward takes; ours reads them "
              "from text_embeddings_file (the loader writes them next to the checkpoint)",
    )


if __name__ == "__main__":
    main()
