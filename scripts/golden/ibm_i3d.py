"""Golden fixture `ibm_i3d`: I3D-ResNet-50 as IBM's action-recognition-pytorch builds and saves it.

Official code: https://github.com/IBM/action-recognition-pytorch @ 67cc96ff1871a33ef54a3e1e6f72022b4d16a847,
`models/threed_models/i3d_resnet.py: I3D_ResNet(50, without_t_stride=True)` (the `i3d_resnet` builder minus its
ImageNet download, which the fixture's weights replace; `--without_t_stride` as in our zoo rows). Reduced:
4 frames, 64 px, 5 classes; depth 50 as released. Nothing shimmed.
Its train.py saves {"epoch", "arch", "state_dict": DataParallel's `module.*` keys, "best_top1", ...}.

    python scripts/golden/ibm_i3d.py --official /tmp/official/action-recognition-pytorch
"""

from __future__ import annotations

import sys

from common import clip, commit_of, golden, parse_args, write_golden

FRAMES, SIZE_PX, CLASSES = 4, 64, 5


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sys.path.insert(0, str(args.official))
    from models.threed_models.i3d_resnet import I3D_ResNet

    model = I3D_ResNet(50, num_classes=CLASSES, dropout=0.5, without_t_stride=True)
    x = clip((2, FRAMES, 3, SIZE_PX, SIZE_PX))
    write_golden(
        "ibm_i3d",
        model=model,
        official={"repo": "IBM/action-recognition-pytorch", "commit": commit_of(args.official),
                  "model": "models/threed_models/i3d_resnet.py: I3D_ResNet(50, num_classes=5, without_t_stride=True)"},
        checkpoint={"file": "K400-I3D-ResNet-50-f4.pth.tar", "prefix": "module.",
                    "wrapper": {"epoch": 50, "arch": "kinetics400-rgb-i3d-resnet-50-f4", "state_dict": golden.STATE,
                                "best_top1": 70.0}},
        imports={"workload": "i3d", "num_classes": CLASSES, "num_frames": FRAMES, "size_px": SIZE_PX,
                 "params": {"backbone": "resnet", "depth": 50, "without_t_stride": True}},
        inputs={"input": x},
        official_forward=lambda m, t: {"logits": m(t["input"].transpose(1, 2))},  # IBM's 3D nets take (B, C, T, H, W)
        swap=("layer3.2.conv2.weight", "layer3.3.conv2.weight"),
        notes="the swap exchanges two blocks' 3x3x3 convs of one stage (same shape)",
    )


if __name__ == "__main__":
    main()
