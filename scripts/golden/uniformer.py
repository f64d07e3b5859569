"""Golden fixture for uniformer from the official UniFormer-S video model (reduced).

Official: https://github.com/Sense-X/UniFormer at 52a0415e4e0dda880fab8ffbc710e4d8e171149d,
`video_classification/slowfast/models/uniformer.py` `Uniformer` with `video_classification/exp/uniformer_s16x4_k400/
config.yaml`, reduced to 8 frames at 64 px and 5 classes; every stage, block, width and head count of UniFormer-S
is kept. The released `uniformer_small_k400_16x4.pth` (Hugging Face Sense-X/uniformer_video) is a bare state dict,
which the official `load_checkpoint` also reads (it takes `model_state` when present, else the dict itself).

Regenerate (the official imports are shimmed as `pyslowfast.py` describes):

    python scripts/golden/uniformer.py --official /tmp/official/UniFormer
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import pyslowfast  # noqa: E402

NUM_FRAMES, SIZE_PX, NUM_CLASSES = 8, 64, 5
EXP = "video_classification/exp/uniformer_s16x4_k400/config.yaml"


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0])
    clone = args.official.resolve()
    package_root = clone / "video_classification"
    cfg = pyslowfast.config(package_root, clone / EXP, [
        "DATA.NUM_FRAMES", NUM_FRAMES, "DATA.TRAIN_CROP_SIZE", SIZE_PX, "DATA.TEST_CROP_SIZE", SIZE_PX,
        "MODEL.NUM_CLASSES", NUM_CLASSES])
    sys.path.insert(0, str(package_root))
    model = importlib.import_module("slowfast.models.uniformer").Uniformer(cfg)

    def official_forward(model, inputs):
        return {"logits": model([inputs["input"].transpose(1, 2)])}  # a list of pathways, (B, C, T, H, W)

    common.write_golden(
        "uniformer",
        model=model,
        official={"repo": "Sense-X/UniFormer", "commit": common.commit_of(clone),
                  "model": f"video_classification/slowfast/models/uniformer.py: Uniformer(cfg), {EXP} with "
                           f"DATA.NUM_FRAMES {NUM_FRAMES}, DATA.TRAIN/TEST_CROP_SIZE {SIZE_PX}, "
                           f"MODEL.NUM_CLASSES {NUM_CLASSES}"},
        checkpoint={"file": "uniformer_small_k400_16x4.pth", "wrapper": common.golden.STATE, "prefix": ""},
        imports={"workload": "uniformer", "num_classes": NUM_CLASSES, "num_frames": NUM_FRAMES, "params": {},
                 "size_px": SIZE_PX},
        inputs={"input": common.clip((2, NUM_FRAMES, 3, SIZE_PX, SIZE_PX))},
        official_forward=official_forward,
        # The two 1x1x1 convs around a local block's depthwise aggregator share their shape.
        swap=("blocks1.0.conv1.weight", "blocks1.0.conv2.weight"),
    )


if __name__ == "__main__":
    main()
