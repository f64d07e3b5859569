"""Golden fixture `ibm_r2plus1d`: R(2+1)D-ResNet-50, IBM's `s3d_resnet` in action-recognition-pytorch.

Official code: https://github.com/IBM/action-recognition-pytorch @ 67cc96ff1871a33ef54a3e1e6f72022b4d16a847,
`models/threed_models/s3d_resnet.py: S3D_ResNet(50, without_t_stride=True)` (the `s3d_resnet` builder minus its
ImageNet download, which the fixture's weights replace; full temporal convs, not `--dw_t_conv`). Reduced:
4 frames, 64 px, 5 classes; depth 50. Nothing shimmed.
Its train.py saves {"epoch", "arch", "state_dict": DataParallel's `module.*` keys, "best_top1", ...}.

    python scripts/golden/ibm_r2plus1d.py --official /tmp/official/action-recognition-pytorch
"""

from __future__ import annotations

import sys

from common import clip, commit_of, golden, parse_args, write_golden

FRAMES, SIZE_PX, CLASSES = 4, 64, 5


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sys.path.insert(0, str(args.official))
    from models.threed_models.s3d_resnet import S3D_ResNet

    model = S3D_ResNet(50, num_classes=CLASSES, dropout=0.5, without_t_stride=True, dw_t_conv=False)
    x = clip((2, FRAMES, 3, SIZE_PX, SIZE_PX))
    write_golden(
        "ibm_r2plus1d",
        model=model,
        official={"repo": "IBM/action-recognition-pytorch", "commit": commit_of(args.official),
                  "model": "models/threed_models/s3d_resnet.py: S3D_ResNet(50, num_classes=5, without_t_stride=True, "
                           "dw_t_conv=False)"},
        checkpoint={"file": "K400-R2plus1D-ResNet-50-f4.pth.tar", "prefix": "module.",
                    "wrapper": {"epoch": 50, "arch": "kinetics400-rgb-s3d-resnet-50-f4", "state_dict": golden.STATE,
                                "best_top1": 70.0}},
        imports={"workload": "r2plus1d", "num_classes": CLASSES, "num_frames": FRAMES, "size_px": SIZE_PX,
                 "params": {"depth": 50, "without_t_stride": True, "mid_width": "ibm"}},
        inputs={"input": x},
        official_forward=lambda m, t: {"logits": m(t["input"].transpose(1, 2))},  # IBM's 3D nets take (B, C, T, H, W)
        swap=("layer2.1.bn2.weight", "layer2.1.bn2_t.weight"),
        notes="the swap exchanges one block's spatial and temporal BN scales (`bn2` / `bn2_t`, same shape)",
    )


if __name__ == "__main__":
    main()
