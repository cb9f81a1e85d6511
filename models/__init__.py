"""Pure torch.nn code: neighbours/sampling, centroid attention, backbone, heads (no Lightning)."""

from models.backbone import BackboneOutput, CentroidBackbone, CentroidStage, KNNInit, StageOutput
from models.centroid_attention import (
    CentroidAttention,
    CentroidAttentionBlock,
    FeedForward,
    KeyValues,
    hard_assignment,
)
from models.flops import count_flops, count_parameters
from models.heads import ClassificationHead, SegmentationHead, interpolate
from models.ops import farthest_point_sample, gather, knn, random_sample

__all__ = [
    "BackboneOutput",
    "CentroidAttention",
    "CentroidAttentionBlock",
    "CentroidBackbone",
    "CentroidStage",
    "ClassificationHead",
    "FeedForward",
    "KNNInit",
    "KeyValues",
    "SegmentationHead",
    "StageOutput",
    "count_flops",
    "count_parameters",
    "farthest_point_sample",
    "gather",
    "hard_assignment",
    "interpolate",
    "knn",
    "random_sample",
]
