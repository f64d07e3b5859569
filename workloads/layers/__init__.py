"""Pieces shared by more than one method (timm's `layers/` idea): backbones, heads, temporal ops.

Frame-folded convention: 2D backbones and the temporal layers inside them see (B*T, C, H, W) with
time as the fast index of the first axis (`clips.flatten(0, 1)`), and know T from construction.
"""

from .backbones import create_backbone_2d, load_backbone_weights, read_state_dict, resnet_stages
from .heads import SegmentClassifier
from .method import Method, PlainModule, as_method
from .temporal_pool import (
    TemporalMaxPool,
    ibm_stage_frames,
    insert_ibm_temporal_pools,
    insert_temporal_pool,
    pooled_frames,
)
from .temporal_shift import SHIFT_PLACES, TemporalShift, insert_temporal_shift, temporal_shift

__all__ = [
    "Method",
    "PlainModule",
    "SHIFT_PLACES",
    "SegmentClassifier",
    "TemporalMaxPool",
    "TemporalShift",
    "as_method",
    "create_backbone_2d",
    "ibm_stage_frames",
    "insert_ibm_temporal_pools",
    "insert_temporal_pool",
    "insert_temporal_shift",
    "load_backbone_weights",
    "pooled_frames",
    "read_state_dict",
    "resnet_stages",
    "temporal_shift",
]
