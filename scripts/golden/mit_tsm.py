"""Golden fixture `mit_tsm`: the official TSM (`ops/models.py` TSN with `is_shift=True`, blockres, shift_div 8)
on a torchvision ResNet-50, imported as actionlab's `tsm`.

Official code: https://github.com/mit-han-lab/temporal-shift-module, commit 1f6a834 (the clone's HEAD is recorded
in golden.json). Reduced size: 8 segments, 64 px, 5 classes; full depth (ResNet-50). No shims needed.

    git clone https://github.com/mit-han-lab/temporal-shift-module /tmp/official/temporal-shift-module
    python scripts/golden/mit_tsm.py --official /tmp/official/temporal-shift-module
"""

from __future__ import annotations

import sys

from common import clip, commit_of, parse_args, write_golden

NUM_FRAMES, SIZE_PX, NUM_CLASSES = 8, 64, 5


def main() -> None:
    args = parse_args(__doc__)
    sys.path.insert(0, str(args.official))
    from ops.models import TSN

    # pretrain="" builds torchvision's ResNet-50 without its ImageNet download; dropout > 0 puts the
    # classifier in `new_fc`, as in every released checkpoint.
    model = TSN(NUM_CLASSES, NUM_FRAMES, "RGB", base_model="resnet50", consensus_type="avg", dropout=0.5,
                pretrain="", is_shift=True, shift_div=8, shift_place="blockres", print_spec=False)
    inputs = {"input": clip((2, NUM_FRAMES, 3, SIZE_PX, SIZE_PX))}

    def official_forward(m, x):
        b, t, c, h, w = x["input"].shape
        return {"logits": m(x["input"].reshape(b, t * c, h, w))}  # (B, T*C, H, W): the official data loader's layout

    write_golden(
        "mit_tsm",
        model=model,
        official={"repo": "mit-han-lab/temporal-shift-module", "commit": commit_of(args.official),
                  "model": "ops/models.py: TSN(5, 8, 'RGB', base_model='resnet50', dropout=0.5, is_shift=True, "
                           "shift_div=8, shift_place='blockres')"},
        # main.py's save_checkpoint of a DataParallel model (the optimizer state left out, as in the releases).
        checkpoint={"file": "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth",
                    "wrapper": {"epoch": 50, "arch": "resnet50", "state_dict": "<STATE>", "best_prec1": 0.0},
                    "prefix": "module."},
        imports={"workload": "tsm", "num_classes": NUM_CLASSES, "num_frames": NUM_FRAMES,
                 "params": {"backbone": "resnet50", "fold_div": 8, "shift_place": "blockres"}, "size_px": SIZE_PX},
        inputs=inputs,
        official_forward=official_forward,
        # The first bottleneck's conv3 and its projection shortcut are both (256, 64, 1, 1).
        swap=("base_model.layer1.0.conv3.weight", "base_model.layer1.0.downsample.0.weight"),
        notes="ResNet-50 at 64 px, 8 segments, 5 classes; eval mode (dropout off, BN running statistics).",
    )


if __name__ == "__main__":
    main()
