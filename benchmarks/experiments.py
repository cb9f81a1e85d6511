"""The experiments of ``python -m benchmarks``: the reference model, the centroid cost variants and the rows of the
learning benchmark (each names its options; docs/operator.md §6 says which are the defaults and why)."""

from __future__ import annotations

from dataclasses import dataclass, field

REFERENCE = "centroid_local"


@dataclass(frozen=True)
class Variant:
    """A centroid cost variant beside the default, measured at ``Config.variant_sizes``: its stage schedule
    (``ratios``), T (``steps``), further backbone ``options``, ``widths`` (stem, then stages), whether it also runs
    at the large sizes ``Config.local_sizes``, and the ``baselines`` measured at the same schedule and T (with
    their own options: ``baselines`` maps a baseline to its backbone keyword arguments)."""

    ratios: list[int] = field(default_factory=lambda: [2, 4, 8])
    steps: int = 2
    options: dict = field(default_factory=dict)
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    large: bool = False
    baselines: dict[str, dict] = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {
    "T = 1": Variant(steps=1, baselines={"full_attention": {}}),
    # the backbone configs' stage settings (configs/model/backbone_*.yaml): T = 1, two-layer KNN init, no
    # feed-forward branch; full attention with the same pooling and blocks
    "the configs' stage settings (T = 1, two-layer KNN init, no FFN)":
        Variant(steps=1, options={"init_layers": 2, "ffn_ratio": 0},
                baselines={"full_attention": {"pool_layers": 2, "ffn_ratio": 0}, "pointnet2": {}}),
    "N/4 first": Variant(ratios=[4, 8, 16], baselines={"full_attention": {}, "pointnet2": {}, "pointnet2_ball": {}}),
    "N/4 first, T = 1": Variant(ratios=[4, 8, 16], steps=1, baselines={"full_attention": {}}),
    "recompute (stage activations recomputed in backward)": Variant(options={"recompute": True}, large=True),
    # parameter-matched: 1.19 M parameters against PointNet++ SSG (kNN) 1.19 M (3.36 M at the default widths)
    "widths 32/72/136/272 (parameters of PointNet++ SSG)": Variant(widths=[32, 72, 136, 272]),
}
#: The variant label of cells measured with ``--compile``.
COMPILED = "torch.compile"
#: The rows of the learning benchmark (``benchmarks/learning.py``): experiment files configs/learning/<row>.yaml.
LEARNING_ROWS = ("centroid", "pointnet2", "full_attention")
#: Variant rows of the learning benchmark: name → (base row, CLI overrides of its experiment file).
LEARNING_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    # T = 2 refinement steps (the default is 1 since the learning benchmark: docs/operator.md §1)
    "centroid_t2": ("centroid", ("--model.init_args.backbone.init_args.stage.steps", "2")),
    # without the relative-position code δ_ij = MLP(p_j − p_i) in keys and values (docs/operator.md §6)
    "centroid_no_pos_code": ("centroid", ("--model.init_args.backbone.init_args.stage.pos_encoding", "false")),
    # the blocks' feed-forward branch of width 2C (the default before: docs/operator.md §6)
    "centroid_ffn": ("centroid", ("--model.init_args.backbone.init_args.stage.ffn_ratio", "2")),
}
