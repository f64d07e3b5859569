"""One `pretrained` convention for every method: a string naming where the initial weights come from.

  ""          random initialisation (every method's default)
  "timm"      timm's weights for the method's timm model name, whose tag picks the set
              (TSN / TSM `backbone: resnet50.tv_in1k`, SLLM / HSAR `vit`)
  a path      a local state dict (.safetensors, or a torch file read with `weights_only=True`),
              checked key by key; each method's Params say which checkpoints it takes
3D models that inflate 2D ImageNet weights (I3D, R3D, R(2+1)D, S3D, TAM) name the 2D weights
instead: a timm tag ("resnet50.tv_in1k") or torchvision's ("tv:googlenet"), or a path.

`pretrained` only says where weights start from; it never changes the network, so counting MACs,
checking params and loading a recorded model build with it cleared (`WorkloadSpec.build(...,
weights=False)`) and read or download nothing.
"""

from __future__ import annotations

TIMM = "timm"


def timm_or_file(pretrained: str, *, owner: str) -> tuple[bool, str]:
    """(use timm's weights, local file) for a method whose network is a timm model.

    Raises:
        TypeError: `pretrained` is not a string (e.g. the boolean of the former convention).
    """
    _check_str(pretrained, owner)
    return pretrained == TIMM, "" if pretrained == TIMM else pretrained


def weights_file(pretrained: str, *, owner: str) -> str:
    """The local file of a method whose weights come from its own (official) checkpoints only."""
    _check_str(pretrained, owner)
    if pretrained == TIMM:
        raise ValueError(
            f"{owner}: there are no timm weights for this network; set pretrained to a local checkpoint "
            f"file (see the method's Params) or '' for random initialisation"
        )
    return pretrained


def _check_str(pretrained, owner: str) -> None:
    if not isinstance(pretrained, str):
        raise TypeError(
            f"{owner}: pretrained must be a string ('' none, 'timm', or a weights file), got {pretrained!r}"
        )
