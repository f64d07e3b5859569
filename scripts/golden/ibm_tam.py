"""Golden fixtures `ibm_tam` and `ibm_tam_b5`: TAM (ResNet-50, `--temporal_module_name TAM`) as IBM's
action-recognition-pytorch builds and saves it.

Official code: https://github.com/IBM/action-recognition-pytorch @ 67cc96ff1871a33ef54a3e1e6f72022b4d16a847,
`models/twod_models/resnet.py: resnet(...)` with `--without_t_stride` (our zoo rows' setting), depthwise,
summed. TAM has two layouts: the default 3 blended frames (`prev_se`, `curr_se`, `next_se`: `ibm_tam`) and any
other count (`blending_layers.<j>` for offset j - k//2: `ibm_tam_b5`, `--blending_frames 5`); the importer
maps each differently. Reduced: 4 frames, 64 px, 5 classes; depth 50 as released. Nothing shimmed.
Its train.py saves {"epoch", "arch", "state_dict": DataParallel's `module.*` keys, "best_top1", ...}.

    python scripts/golden/ibm_tam.py --official /tmp/official/action-recognition-pytorch
"""

from __future__ import annotations

import sys

from common import clip, commit_of, golden, parse_args, write_golden

FRAMES, SIZE_PX, CLASSES = 4, 64, 5


def write(method: str, *, official: str, blend_frames: int, swap: tuple, notes: str) -> None:
    from models.twod_models.resnet import resnet

    model = resnet(50, CLASSES, without_t_stride=True, groups=FRAMES, temporal_module_name="TAM", dw_conv=True,
                   blending_frames=blend_frames, blending_method="sum", dropout=0.5, pooling_method="max",
                   imagenet_pretrained=False)
    write_golden(
        method,
        model=model,
        official={"repo": "IBM/action-recognition-pytorch", "commit": commit_of(official),
                  "model": "models/twod_models/resnet.py: resnet(50, num_classes=5, without_t_stride=True, "
                           f"groups=4, temporal_module_name='TAM', blending_frames={blend_frames})"},
        checkpoint={"file": f"K400-TAM-b{blend_frames}-ResNet-50-f4.pth.tar", "prefix": "module.",
                    "wrapper": {"epoch": 50, "arch": f"kinetics400-rgb-TAM-b{blend_frames}-sum-resnet-50-f4",
                                "state_dict": golden.STATE, "best_top1": 70.0}},
        imports={"workload": "tam", "num_classes": CLASSES, "num_frames": FRAMES, "size_px": SIZE_PX,
                 "params": {"depth": 50, "without_t_stride": True, "blend_frames": blend_frames}},
        inputs={"input": clip((2, FRAMES, 3, SIZE_PX, SIZE_PX))},
        # IBM's 2D models take (B, T*C, H, W), frame-major channels (its loader stacks frames)
        official_forward=lambda m, t: {"logits": m(t["input"].flatten(1, 2))},
        swap=swap,
        notes=notes,
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sys.path.insert(0, str(args.official))
    write("ibm_tam", official=args.official, blend_frames=3,
          swap=("layer2.1.tam.prev_se.fc1.weight", "layer2.1.tam.next_se.fc1.weight"),
          notes="the swap exchanges one TAM's weights for frames t-1 and t+1 (a converter may order them either way)")
    write("ibm_tam_b5", official=args.official, blend_frames=5,
          swap=("layer2.1.tam.blending_layers.0.fc1.weight", "layer2.1.tam.blending_layers.4.fc1.weight"),
          notes="the swap exchanges one TAM's weights for frames t-2 and t+2 (a converter may order them either way)")


if __name__ == "__main__":
    main()
