"""Golden fixtures `afnet_r50` and `afnet_mbv3`: the official AFNet-TSM (`ops/models.py` TSN(AF_resnet50) and
`ops/models_mobilenet.py` TSN(AF_mobilenetv3)), imported as actionlab's `afnet` with the zoo's
`eval_gating=gumbel`; the outputs are the logits and every navigation module's keep mask.

Official code: https://github.com/BeSpontaneous/AFNet-pytorch, commit f20b92e (the clone's HEAD is recorded in
golden.json). Reduced size: 8 segments, 56 px (stage 2's ample maps are then upsampled from 4 to 7), 5 classes;
full depth (AF-ResNet50, AF-MobileNetV3-Large).

The official evaluation (`main.py` validate) runs `forward_calc_flops(input, args.t1)`: a hard Gumbel gate
whose noise is random on both sides, drawn differently. Both run here with the noise at zero (the shim below
on the official `GumbleSoftmax`; the `logits_and_masks` adapter of tests/golden.py on ours), so each side keeps
exactly the frames whose keep logit beats the skip logit. Nothing else is shimmed.

BN statistics: with the rule's random ones, the deep, gated networks forget their input (AF-MobileNetV3's
logits agreed to 4 digits for two different clips, so an error in its early layers would not show). The
running means and variances are measured instead on a calibration clip (train-mode forward, cumulative
average) and stored in the fixture; every other tensor follows the rule. The variances are scaled up a little
(`var_scale`): with the measured ones the random network is chaotic (float32 rounding alone moved AF-ResNet50's
logits by 2.2e-5 of their size against a float64 run), with the rule's it forgets its input. Measured with the
chosen scales: rounding 1.0e-6 / 1.6e-7 of the logits, the two clips' logits 13 % / 5 % apart (AF-ResNet50 /
AF-MobileNetV3).

    git clone https://github.com/BeSpontaneous/AFNet-pytorch /tmp/official/AFNet-pytorch
    python scripts/golden/afnet.py --official /tmp/official/AFNet-pytorch
"""

from __future__ import annotations

import sys

import torch
from common import clip, commit_of, parse_args, write_golden

import golden  # tests/golden.py: on sys.path once common is imported

NUM_FRAMES, SIZE_PX, NUM_CLASSES, T1 = 8, 56, 5, 0.01  # T1: opts.py's --t1, the evaluation temperature

VARIANTS = {
    "afnet_r50": {
        "module": "ops.models", "arch_file": "AF_ResNet", "arch": "AF_resnet50", "params": {}, "var_scale": 1.5,
        # Two focal (refine_module) blocks of stage 1, both (64, 32, 3, 3): an index mix-up in the focal branch.
        "swap": ("base_model.layer1.refine_module.0.conv2.weight", "base_model.layer1.refine_module.1.conv2.weight"),
    },
    "afnet_mbv3": {
        "module": "ops.models_mobilenet", "arch_file": "AF_MobileNetv3", "arch": "AF_mobilenetv3",
        "params": {"backbone": "mobilenetv3"}, "var_scale": 1.15,
        # Stage 2's second ample (base) and focal (refine) blocks share their depthwise conv's shape.
        "swap": ("base_model.features_stage2_base.1.conv2.weight", "base_model.features_stage2_refine.1.conv2.weight"),
    },
}


def main() -> None:
    args = parse_args(__doc__)
    sys.path.insert(0, str(args.official))
    import importlib

    from ops.backbone.gumbel_softmax import GumbleSoftmax

    GumbleSoftmax.sample_gumbel_like = lambda self, template, eps=1e-10: torch.zeros_like(template)  # noise-free

    for method, v in VARIANTS.items():
        tsn = importlib.import_module(v["module"]).TSN
        # pretrain="" skips the ImageNet AF backbone file; train_sth.sh passes dropout 0.5, --npb and --shift.
        model = tsn(v["arch_file"], NUM_CLASSES, NUM_FRAMES, "RGB", "", base_model=v["arch"], consensus_type="avg",
                    dropout=0.5, partial_bn=False, pretrain="", is_shift=True, print_spec=False)
        stats = calibrate_bn(model, clip((2, NUM_FRAMES, 3, SIZE_PX, SIZE_PX), seed=1), var_scale=v["var_scale"])
        write_golden(
            method,
            model=model,
            official={"repo": "BeSpontaneous/AFNet-pytorch", "commit": commit_of(args.official),
                      "model": f"{v['module'].replace('.', '/')}.py: TSN('{v['arch_file']}', 5, 8, 'RGB', '', "
                               f"base_model='{v['arch']}', dropout=0.5, is_shift=True); forward_calc_flops(x, t1=0.01) "
                               "with zero Gumbel noise"},
            # main.py's save_checkpoint of the DataParallel / DDP model (optimizer state and logs left out).
            checkpoint={"file": "ckpt.best.pth.tar",
                        "wrapper": {"epoch": 55, "arch": v["arch"], "state_dict": "<STATE>", "best_prec1": 0.0},
                        "prefix": "module."},
            imports={"workload": "afnet", "num_classes": NUM_CLASSES, "num_frames": NUM_FRAMES,
                     "params": {**v["params"], "shift": True, "eval_gating": "gumbel", "t1": T1}, "size_px": SIZE_PX},
            inputs={"input": clip((2, NUM_FRAMES, 3, SIZE_PX, SIZE_PX))},
            official_forward=official_forward,
            forward="logits_and_masks",
            swap=v["swap"],
            stored=stats,
            notes="8 segments at 56 px, 5 classes; eval mode; BN statistics of a calibration clip (stored); hard "
                  "Gumbel gate at t1 with zero noise on both sides. masks: (navigation modules, B, T), 1 = the focal "
                  "branch processed the frame.",
        )


def calibrate_bn(model, calibration: torch.Tensor, *, var_scale: float) -> tuple:
    """Loads the rule's weights, sets every BN's running statistics to those of `calibration` (one train-mode
    forward, cumulative average; variances times `var_scale`), and returns their keys (the entries the
    fixture stores)."""
    state = model.state_dict()
    model.load_state_dict({k: golden.generated_tensor(k, list(v.shape), str(v.dtype).removeprefix("torch."))
                           if v.is_floating_point() else v for k, v in state.items()})
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        official_forward(model, {"input": calibration})
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.mul_(var_scale)
    model.eval()
    return tuple(k for k in state if k.endswith((".running_mean", ".running_var")))


def official_forward(model, inputs: dict) -> dict:
    x = inputs["input"]
    b, t, c, h, w = x.shape
    logits, masks, _ = model.forward_calc_flops(x.reshape(b, t * c, h, w), T1)  # (B, T*C, H, W): official layout
    return {"logits": logits, "masks": torch.stack([m.view(b, t) for m in masks])}  # each (B*T, 1, 1, 1)


if __name__ == "__main__":
    main()
