"""Golden fixture `h2cn`: the official H2CN (`ops/models_tsn.py` VideoNet, net H2CN: `nets/h2cn_model.py`
`h2cn`, a ResNet-50 with both hourglass convolutions), imported as actionlab's `h2cn`.

Official code: https://github.com/ty-97/H2CN, commit cbfd3e7 (the clone's HEAD is recorded in golden.json).
Reduced size: 8 segments of 5 frames, 28 px (the motion stem's 4 x 4 map is then upsampled to the
appearance stem's 7 x 7), 5 classes; full depth.

Shims: `h2cn()` always builds its two ResNets with `pretrained=True`, which downloads fbresnet50 weights; the
script has `nets.h2cn_model.h2cn50` build them without (every weight is then replaced by the rule anyway).
The hourglass convolutions' zero padding is made with `torch.zeros(...).cuda()`; during the official forward
`Tensor.cuda` returns the tensor itself, so it runs on the CPU.

    git clone https://github.com/ty-97/H2CN /tmp/official/H2CN
    python scripts/golden/h2cn.py --official /tmp/official/H2CN
"""

from __future__ import annotations

import sys
from unittest import mock

import torch
from common import clip, commit_of, parse_args, write_golden

NUM_SEGMENTS, SNIPPET_FRAMES, SIZE_PX, NUM_CLASSES = 8, 5, 28, 5


def main() -> None:
    args = parse_args(__doc__)
    sys.path.insert(0, str(args.official))
    import nets.base_module
    import nets.h2cn_model

    nets.h2cn_model.h2cn50 = lambda num_segments, pretrained=False: nets.base_module.h2cn50(num_segments, False)
    from ops.models_tsn import VideoNet

    model = VideoNet(NUM_CLASSES, NUM_SEGMENTS, "RGB", backbone="resnet50", net="H2CN", consensus_type="avg",
                     dropout=0.5, partial_bn=False, pretrain="")
    inputs = {"input": clip((2, NUM_SEGMENTS * SNIPPET_FRAMES, 3, SIZE_PX, SIZE_PX))}

    def official_forward(m, x):
        b, t, c, h, w = x["input"].shape
        with mock.patch.object(torch.Tensor, "cuda", lambda self, *a, **k: self):
            return {"logits": m(x["input"].reshape(b, t * c, h, w))}  # (B, S*5*C, H, W): the official layout

    write_golden(
        "h2cn",
        model=model,
        official={"repo": "ty-97/H2CN", "commit": commit_of(args.official),
                  "model": "ops/models_tsn.py: VideoNet(5, 8, 'RGB', backbone='resnet50', net='H2CN', dropout=0.5)"},
        # main.py's save_checkpoint of the DataParallel model (the optimizer state left out).
        checkpoint={"file": "ckpt.best.pth.tar",
                    "wrapper": {"epoch": 60, "arch": "resnet50", "state_dict": "<STATE>", "best_prec1": 0.0},
                    "prefix": "module."},
        imports={"workload": "h2cn", "num_classes": NUM_CLASSES, "num_frames": NUM_SEGMENTS, "params": {},
                 "size_px": SIZE_PX},
        inputs=inputs,
        official_forward=official_forward,
        # The two frame-level hourglass convolutions' spatial aggregations, both (3, 1, 3, 3).
        swap=("base_model.fhgc1.0.spaAgg.weight", "base_model.fhgc2.0.spaAgg.weight"),
        notes="8 segments x 5 frames at 28 px, 5 classes; eval mode (dropout off, BN running statistics).",
    )


if __name__ == "__main__":
    main()
