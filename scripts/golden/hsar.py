"""Golden fixture for HSAR from the official code: https://github.com/HVG808/HSAR_repo at
2905e6614626216ddeb934480f19060c492f5b9b (`mmaction/models/backbones/HS/HSencoder.py`, `TMT.py`,
`vision_transformer.py`; `mmaction/models/heads/HSAR_head.py`), an mmaction2 0.x overlay.

    pip install --target /tmp/hsar_deps einops opencv-python-headless  # the official forward needs both
    PYTHONPATH=/tmp/hsar_deps python scripts/golden/hsar.py --official /tmp/official/HSAR_repo

Reduced model, same blocks: HSAR-Base's layout (`configs/recognition/HS/k400/HSAR_Base_K400.py`: Apool,
Fpool cls, 6 TMT and 6 fusion layers, 16 and 12 heads, mlp 1024, skip_mo 4, the 768-channel 16-px stem)
at dim 64 (fusion heads of 64 // 12 = 5: the inner width 60 != dim, as 2040 != 2048 in Base), 12 frames
(`stride`) of 48 px, TMT frames of 32 px (a real, antialiased downsampling), 5 classes. The spatial ViT-B/16 keeps its 12 blocks; HSencoder
builds it at 224 px, so the script rebuilds it with the same call at `img_size=[48]` (its position table
then has the shape ours builds, and the official forward does not interpolate it).

The official forward computes Farneback optical flow with OpenCV on the CPU; ours computes Lucas-Kanade
on the device (a documented deviation). The fixture keeps the official flow (`flow`, recorded from
`Flow_TMT.get_optical_flow`) and the `hsar_official_flow` adapter feeds it to ours in place of its own,
so the comparison covers every weight and the whole network, not the flow algorithm. The logits are
`cls_head(backbone(x)[0])`, the recogniser's scores before test-time averaging. The checkpoint is
mmaction2's {"meta", "state_dict"} with `backbone.` / `cls_head.` keys. Kept as built (`stored`): the
TMT's fixed sinusoid table and its `ln_post` (never trained officially: ours requires the identity).

Shims (imports the forward does not use; no official file is edited): mmcv (`runner`, `cnn`), the
misspelt `mmTMTion.utils`, ipdb, torchsummary (its `summary` prints a table at construction: no-op),
fvcore, torch.utils.tensorboard (`SummaryWriter` would create OUTPUT/K400/vis_show: no-op), the
backbone's `xclip` module; mmaction's registries (decorators returning the class), `BaseHead` (stores
num_classes and in_channels, as mmaction's does; no loss module) and a bare package skeleton so that
only the HS files above are executed. `Tensor.cuda` is the identity during the official forward (it
moves masks and the flow to the GPU).
"""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from common import commit_of, parse_args, write_golden
from torch import nn

NUM_FRAMES, SIZE_PX, FRAME_PX, NUM_CLASSES, DIM, SKIP_MO = 12, 48, 32, 5, 64, 4
MODEL = dict(frame_size=FRAME_PX, stride=NUM_FRAMES, dim=DIM, depth=6, num_heads=16, mlp_dim=1024, dropout=0.1,
             emb_dropout=0.1, drop_path=0.1, fusion_layer=6, fusion_head=12, Apool="cls", Fpool="cls",
             freeze_spa=True, skip_mo=SKIP_MO)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _package(name: str, path: list) -> None:
    _stub(name, __path__=[str(p) for p in path])


class _Registry:
    def register_module(self, *args, **kwargs):
        return lambda cls: cls


class _BaseHead(nn.Module):
    def __init__(self, num_classes, in_channels, loss_cls=None, **kwargs):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels


def _import_official(root):
    noop = lambda *args, **kwargs: None  # noqa: E731
    _stub("mmcv")
    _stub("mmcv.runner", load_checkpoint=noop, _load_checkpoint=noop, load_state_dict=noop)
    _stub("mmcv.cnn", trunc_normal_init=noop)
    _stub("mmTMTion")
    _stub("mmTMTion.utils", get_root_logger=noop)
    _stub("ipdb", set_trace=noop)
    _stub("torchsummary", summary=noop)
    _stub("fvcore")
    _stub("fvcore.nn", FlopCountAnalysis=noop)
    _stub("torch.utils.tensorboard", SummaryWriter=lambda *args, **kwargs: types.SimpleNamespace(add_image=noop))
    models = root / "mmaction" / "models"
    _package("mmaction", [root / "mmaction"])
    _package("mmaction.models", [models])
    _stub("mmaction.models.builder", BACKBONES=_Registry(), HEADS=_Registry())
    _package("mmaction.models.backbones", [models / "backbones"])
    _package("mmaction.models.backbones.HS", [models / "backbones" / "HS"])
    _stub("mmaction.models.backbones.HS.xclip", Xclip_visual=None)
    _package("mmaction.models.heads", [models / "heads"])
    _stub("mmaction.models.heads.base", BaseHead=_BaseHead)
    from mmaction.models.backbones.HS import HSencoder, TMT, vision_transformer
    from mmaction.models.heads import HSAR_head

    return HSencoder.HSencoder, TMT.Flow_TMT, vision_transformer.vit_base, HSAR_head.HSARHead


@contextmanager
def _cuda_is_identity():
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def _moving_clip() -> torch.Tensor:
    """8-bit pixels of a smooth texture drifting one pixel per frame (so the flow is not noise), as
    (B, T, C, H, W) 0..255."""
    g = torch.Generator().manual_seed(0)
    texture = F.interpolate(torch.rand(2, 3, 12, 12, generator=g), size=(SIZE_PX + NUM_FRAMES,) * 2, mode="bicubic")
    frames = [texture[..., t : t + SIZE_PX, t // 2 : t // 2 + SIZE_PX] for t in range(NUM_FRAMES)]
    return (torch.stack(frames, 1).clamp(0, 1) * 255).round()  # (B, T, C, H, W)


def main() -> None:
    args = parse_args(__doc__)
    HSencoder, Flow_TMT, vit_base, HSARHead = _import_official(args.official)
    torch.manual_seed(0)
    model = nn.Module()  # mmaction's Recognizer3D holds these two under these names
    model.backbone = HSencoder(**MODEL)
    model.backbone.spatial_enc = vit_base(img_size=[SIZE_PX], patch_size=16, drop_rate=MODEL["dropout"],
                                          attn_drop_rate=MODEL["emb_dropout"], drop_path_rate=MODEL["drop_path"])
    model.cls_head = HSARHead(num_classes=NUM_CLASSES, in_channels=DIM)

    pixels = _moving_clip()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    clip = (pixels / 255 - mean) / std  # (B, T, C, H, W): as actionlab normalises
    flows = []
    tmt = model.backbone.temporal_enc

    def recorded_flow(*args):
        flow, intensity = Flow_TMT.get_optical_flow(tmt, *args)
        flows.append(flow)
        return flow, intensity

    tmt.get_optical_flow = recorded_flow

    def official_forward(m, inputs):
        with _cuda_is_identity():
            embedding, _ = m.backbone(pixels.permute(0, 2, 1, 3, 4))  # (B, C, T, H, W) 0..255, as mmaction feeds it
        if not torch.equal(flows[-1], inputs["flow"]):
            raise SystemExit("hsar: the official flow changed between two forwards of the same clip")
        return {"logits": m.cls_head(embedding)}

    with torch.no_grad():  # records the flow the official forward computes for this clip
        with _cuda_is_identity():
            model.backbone(pixels.permute(0, 2, 1, 3, 4))
    stored = ("backbone.temporal_enc.position_enc.pos_table", "backbone.temporal_enc.ln_post.weight",
              "backbone.temporal_enc.ln_post.bias")
    write_golden(
        "hsar",
        model=model,
        official={"repo": "HVG808/HSAR_repo", "commit": commit_of(args.official),
                  "model": f"HSencoder({MODEL}) with spatial_enc = vit_base(img_size=[{SIZE_PX}], patch_size=16, ...), "
                           f"HSARHead(num_classes={NUM_CLASSES}, in_channels={DIM})"},
        checkpoint={"file": "epoch_18.pth", "wrapper": {"meta": {"epoch": 18, "iter": 0}, "state_dict": "<STATE>"},
                    "prefix": ""},
        imports={"workload": "hsar", "num_classes": NUM_CLASSES, "num_frames": NUM_FRAMES, "size_px": SIZE_PX,
                 "params": {"spatial_img_size_px": SIZE_PX, "dim": DIM, "frame_size_px": FRAME_PX, "skip_mo": SKIP_MO,
                            "motion": "flow", "depth": 6, "num_heads": 16, "mlp_dim": 1024, "fusion_depth": 6,
                            "fusion_heads": 12}},
        inputs={"input": clip.contiguous(), "flow": flows[0].float().contiguous()},
        official_forward=official_forward,
        # The MLP's first layer of the first TMT block and of the first fusion block: both (1024, dim).
        swap=("backbone.temporal_enc.transformer.layers.0.1.fn.net.0.weight", "backbone.fusion.layers.0.1.fn.net.0.weight"),
        forward="hsar_official_flow",
        stored=stored,
        notes="flow: the official OpenCV Farneback flow of the TMT frames (B, N, 2, h, w), fed to ours in place of "
              "its Lucas-Kanade flow; pos_table and ln_post kept as built (fixed table; never trained officially)",
    )


if __name__ == "__main__":
    main()
