"""Golden fixture for mvitv2 from PySlowFast's `MViT` (MViTv2-S 16x4, reduced).

Official: https://github.com/facebookresearch/SlowFast at 287ec0076846560f44a9327e931a5a2360240533,
`slowfast/models/video_model_builder.py` `MViT` with `configs/Kinetics/MVITv2_S_16x4.yaml`, reduced to 8 frames
at 64 px and 5 classes; every block, width, head count and stride of the config is kept. Its checkpoints are
`checkpoint_epoch_XXXXX.pyth` = {"model_state": state, "epoch": ...} (`slowfast/utils/checkpoint.py`).

Regenerate (the official imports are shimmed as `pyslowfast.py` describes):

    python scripts/golden/mvitv2.py --official /tmp/official/SlowFast

In eval mode the official head applies softmax (MODEL.HEAD_ACT); the golden `logits` are the official
`head.projection` output, taken by a forward hook, which is what actionlab's model returns.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import pyslowfast  # noqa: E402

NUM_FRAMES, SIZE_PX, NUM_CLASSES = 8, 64, 5


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0])
    clone = args.official.resolve()
    cfg = pyslowfast.config(clone, clone / "configs/Kinetics/MVITv2_S_16x4.yaml", [
        "DATA.NUM_FRAMES", NUM_FRAMES, "DATA.TRAIN_CROP_SIZE", SIZE_PX, "DATA.TEST_CROP_SIZE", SIZE_PX,
        "MODEL.NUM_CLASSES", NUM_CLASSES])
    sys.path.insert(0, str(clone))
    builder = importlib.import_module("slowfast.models.video_model_builder")
    model = builder.MViT(cfg)

    def official_forward(model, inputs):
        logits = []
        hook = model.head.projection.register_forward_hook(lambda m, i, out: logits.append(out))
        model([inputs["input"].transpose(1, 2)])  # official layout: a list of pathways, (B, C, T, H, W)
        hook.remove()
        return {"logits": logits[0]}

    common.write_golden(
        "mvitv2",
        model=model,
        official={"repo": "facebookresearch/SlowFast", "commit": common.commit_of(clone),
                  "model": "slowfast/models/video_model_builder.py: MViT(cfg), configs/Kinetics/MVITv2_S_16x4.yaml "
                           f"with DATA.NUM_FRAMES {NUM_FRAMES}, DATA.TRAIN/TEST_CROP_SIZE {SIZE_PX}, "
                           f"MODEL.NUM_CLASSES {NUM_CLASSES}"},
        checkpoint={"file": "checkpoint_epoch_00200.pyth", "prefix": "",
                    "wrapper": {"model_state": common.golden.STATE, "epoch": 200}},
        imports={"workload": "mvitv2", "num_classes": NUM_CLASSES, "num_frames": NUM_FRAMES,
                 "params": {"img_size_px": SIZE_PX}, "size_px": SIZE_PX},
        inputs={"input": common.clip((2, NUM_FRAMES, 3, SIZE_PX, SIZE_PX))},
        official_forward=official_forward,
        # The q and k pooling convs of a block share their shape; a converter mapping by shape confuses them.
        swap=("blocks.3.attn.pool_q.weight", "blocks.3.attn.pool_k.weight"),
        notes="logits: the official head.projection output (the eval-mode head applies softmax after it)",
    )


if __name__ == "__main__":
    main()
