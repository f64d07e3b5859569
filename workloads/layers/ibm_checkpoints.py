"""Checkpoint names shared by the methods IBM action-recognition-pytorch released, and MIT TSM's.

2D ResNets in torchvision names (IBM's `models/twod_models/resnet.py` and MIT TSM's `ops/models.py` both
build torchvision ResNets; timm's ResNet has the same names). IBM's names are the network's own (`fc` =
the classifier) once the `module.` of its DataParallel wrapper is gone (`models.weights` strips it on
reading); MIT wraps the network as `base_model` with the classifier in `new_fc` (or `base_model.fc` with
dropout 0). TSN, TSM and TAM add their own trunk rules to these.
"""

from __future__ import annotations

from .checkpoint import CheckpointFilter

RESNET_CLASSIFIER_RULES = (
    (r"new_fc\.(weight|bias)", r"fc.\1"),
    (r"(?:base_model\.)?fc\.(weight|bias)", r"fc.\1"),
)
RESNET_HINTS = ((r"^fc\.", "classes (--num-classes)"), (r"tam\.", "TAM options (blend_frames, depthwise)"),
                (r"layer\d\.\d+\.", "depth / backbone (--set)"))


def ibm_3d_filter(paper: str) -> CheckpointFilter:
    """The checkpoint filter of IBM's 3D networks (`models/threed_models/{i3d_resnet,s3d_resnet,i3d,s3d}.py`):
    bare module names with the classifier in `fc`; ours put the trunk under `backbone.` and the
    classifier in `head.fc`."""
    return CheckpointFilter(
        paper=paper,
        rules=((r"fc\.(weight|bias)", r"head.fc.\1"), (r"(.+)", r"backbone.\1")),
        hints=((r"^head\.fc", "classes (--num-classes)"), (r"layer\d\.\d+\.|inception", "depth / backbone (--set)"),
               (r"conv\d?\.?weight|conv_t|conv_s", "inflation: i3d vs s3d / r2plus1d (another method's checkpoint)")),
    )
