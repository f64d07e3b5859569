"""Golden fixture `ibm_tsn`: TSN (ResNet-50) as IBM's action-recognition-pytorch builds and saves it.

Official code: https://github.com/IBM/action-recognition-pytorch @ 67cc96ff1871a33ef54a3e1e6f72022b4d16a847,
`models/twod_models/resnet.py: resnet(...)` with no temporal module and `--without_t_stride` (our zoo rows'
setting). Reduced: 4 frames, 64 px, 5 classes; depth 50 as released. Nothing shimmed.
Its train.py saves {"epoch", "arch", "state_dict": DataParallel's `module.*` keys, "best_top1", ...}.

    python scripts/golden/ibm_tsn.py --official /tmp/official/action-recognition-pytorch
"""

from __future__ import annotations

import sys

from common import clip, commit_of, golden, parse_args, write_golden

FRAMES, SIZE_PX, CLASSES = 4, 64, 5


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sys.path.insert(0, str(args.official))
    from models.twod_models.resnet import resnet

    model = resnet(50, CLASSES, without_t_stride=True, groups=FRAMES, temporal_module_name=None, dw_conv=True,
                   blending_frames=3, blending_method="sum", dropout=0.5, pooling_method="max",
                   imagenet_pretrained=False)
    x = clip((2, FRAMES, 3, SIZE_PX, SIZE_PX))
    write_golden(
        "ibm_tsn",
        model=model,
        official={"repo": "IBM/action-recognition-pytorch", "commit": commit_of(args.official),
                  "model": "models/twod_models/resnet.py: resnet(50, num_classes=5, without_t_stride=True, "
                           "groups=4, temporal_module_name=None)"},
        checkpoint={"file": "K400-TSN-ResNet-50-f4.pth.tar", "prefix": "module.",
                    "wrapper": {"epoch": 50, "arch": "kinetics400-rgb-resnet-50-f4", "state_dict": golden.STATE,
                                "best_top1": 70.0}},
        imports={"workload": "tsn", "num_classes": CLASSES, "num_frames": FRAMES, "size_px": SIZE_PX,
                 "params": {"backbone": "resnet50", "without_t_stride": True}},
        inputs={"input": x},
        # IBM's 2D models take (B, T*C, H, W), frame-major channels (its loader stacks frames)
        official_forward=lambda m, t: {"logits": m(t["input"].flatten(1, 2))},
        swap=("layer3.2.conv1.weight", "layer3.3.conv1.weight"),
        notes="the swap exchanges two blocks' first convs of one stage (same shape)",
    )


if __name__ == "__main__":
    main()
