"""The experiments of ``python -m benchmarks``: the reference model, the centroid cost variants and the training
candidates (each row names its options; docs/operator.md §6 says which are the defaults and why)."""

from __future__ import annotations

REFERENCE = "centroid_local"

TRAIN_SETUP = ("seeds", "train_epochs", "train_points", "train_per_class", "test_per_class", "data_root")
#: Centroid cost variants beside the default: name → (schedule ratios, T, backbone options, also at the large
#: sizes ``Config.local_sizes``, baselines measured at the same schedule and T), at ``Config.variant_sizes``.
VARIANTS: dict[str, tuple[list[int], int, dict, bool, tuple[str, ...]]] = {
    "T = 1": ([2, 4, 8], 1, {}, False, ("full_attention",)),
    "N/4 first": ([4, 8, 16], 2, {}, False, ("full_attention", "pointnet2")),
    "N/4 first, T = 1": ([4, 8, 16], 1, {}, False, ("full_attention",)),
    "recompute (stage activations recomputed in backward)": ([2, 4, 8], 2, {"recompute": True}, True, ()),
}
#: The variant label of cells measured with ``--compile``.
COMPILED = "torch.compile"
#: The training candidate that is the centroid backbone with its defaults (configs/model/backbone_*.yaml).
DEFAULT_CENTROID = "Centroid + LayerScale 1e-3, BatchNorm KNN init"
#: Training candidates: label → (model, backbone options, schedule ratios, T). The "(before)" rows are the
#: models as they were before issue 12 (no LayerScale, raw offsets).
CANDIDATES: dict[str, tuple[str, dict, list[int], int]] = {
    "PointNet++ SSG": ("pointnet2", {}, [2, 4, 8], 2),
    "PointNet++ SSG, BatchNorm": ("pointnet2", {"norm": "batch"}, [2, 4, 8], 2),
    "Full self-attention": ("full_attention", {}, [2, 4, 8], 2),
    "Full self-attention, no LayerScale (before)": ("full_attention", {"layer_scale": None}, [2, 4, 8], 2),
    "Centroid, plain init (before)": ("centroid_local", {"layer_scale": None, "init_norm": "layer"}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, LayerNorm KNN init": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "layer"}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, LayerNorm KNN init, T = 1": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "layer"}, [2, 4, 8], 1),
    "Centroid + normalised offsets": ("centroid_local", {"layer_scale": None, "init_norm": "layer", "normalize_offsets": True}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, 2-layer KNN init": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "layer", "init_layers": 2}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, BatchNorm KNN init": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "batch"}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, BatchNorm KNN init, T = 1": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "batch"}, [2, 4, 8], 1),
}
