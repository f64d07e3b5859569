"""Golden fixture `ibm_s3d`: S3D (Inception-v1 with separable 3D convs), IBM's `s3d` in action-recognition-pytorch.

Official code: https://github.com/IBM/action-recognition-pytorch @ 67cc96ff1871a33ef54a3e1e6f72022b4d16a847,
`models/threed_models/s3d.py: S3D(without_t_stride=True, pooling_method="max")` (the `s3d` builder minus its
GoogLeNet download, which the fixture's weights replace; full temporal convs, not `--dw_t_conv`). Reduced:
4 frames, 64 px (the smallest the last 2x2 pool and the 7x7 stem leave room for at stride 32), 5 classes.
Nothing shimmed. Its train.py saves {"epoch", "arch", "state_dict": DataParallel's `module.*` keys, ...}.

    python scripts/golden/ibm_s3d.py --official /tmp/official/action-recognition-pytorch
"""

from __future__ import annotations

import sys

import torch
from common import clip, commit_of, golden, parse_args, write_golden

from workloads.registry import IMAGENET_MEAN, IMAGENET_STD

FRAMES, SIZE_PX, CLASSES = 4, 64, 5


def official_input(x: torch.Tensor) -> torch.Tensor:
    """Our clip (ImageNet mean/std) as IBM's S3D is fed: normalised with mean 0.5, std 0.5 (its `mean()`,
    `std()`, which train.py hands the data pipeline), laid out (B, C, T, H, W)."""
    std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    return ((x * std + mean - 0.5) / 0.5).transpose(1, 2)  # (B, T, C, H, W) -> (B, C, T, H, W)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sys.path.insert(0, str(args.official))
    from models.threed_models.s3d import S3D

    model = S3D(num_classes=CLASSES, dropout_ratio=0.5, without_t_stride=True, pooling_method="max", dw_t_conv=False)
    x = clip((2, FRAMES, 3, SIZE_PX, SIZE_PX))
    write_golden(
        "ibm_s3d",
        model=model,
        official={"repo": "IBM/action-recognition-pytorch", "commit": commit_of(args.official),
                  "model": "models/threed_models/s3d.py: S3D(num_classes=5, without_t_stride=True, "
                           "pooling_method='max', dw_t_conv=False)"},
        checkpoint={"file": "K400-S3D-f4.pth.tar", "prefix": "module.",
                    "wrapper": {"epoch": 50, "arch": "kinetics400-rgb-s3d-f4", "state_dict": golden.STATE,
                                "best_top1": 70.0}},
        imports={"workload": "s3d", "num_classes": CLASSES, "num_frames": FRAMES, "size_px": SIZE_PX,
                 "params": {"backbone": "inception_v1", "without_t_stride": True}},
        inputs={"input": x},
        official_forward=lambda m, t: {"logits": m(official_input(t["input"]))},
        swap=("inception4b.branch2.1.bn.weight", "inception4b.branch2.1.bn_t.weight"),
        notes="the swap exchanges one separable conv's spatial and temporal BN scales (`bn` / `bn_t`, same shape)",
    )


if __name__ == "__main__":
    main()
