"""Heads: map the backbone's output to logits (classification of the whole set, segmentation of every point).

One contract: every head's ``forward`` takes the :class:`~models.backbone.BackboneOutput` (segmentation also
the object category), so callers never branch on the head's type. The heads normalise with LayerNorm only (no
BatchNorm): their outputs do not depend on the other clouds of the batch, in training as in evaluation. (The
backbone's KNN initialisation uses BatchNorm over the pairs of a batch by default, docs/operator.md §6.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import BackboneOutput
from models.ops import gather, knn


def _mlp_layer(in_dim: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear → LayerNorm → ReLU (→ Dropout)`` on ``[..., in_dim]``."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim), nn.ReLU()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ClassificationHead(nn.Module):
    """Max + mean pool over the last stage's centroids (docs/operator.md §4), then an MLP to class logits.

    Shapes: out :class:`BackboneOutput` whose last stage has feat ``[B, M, in_channels]`` → logits
    ``[B, num_classes]``. :meth:`classify` does the same on any feature set ``[B, M, in_channels]``.

    Attributes:
        num_categories: 0, the object categories the head is conditioned on (none; as :class:`SegmentationHead`).
    """

    num_categories = 0

    def __init__(
        self, in_channels: int, num_classes: int, hidden: list[int] = [512, 256], dropout: float = 0.5  # noqa: B006 -- jsonargparse
    ) -> None:
        super().__init__()
        dims = [2 * in_channels, *hidden]
        self.mlp = nn.Sequential(*(_mlp_layer(a, b, dropout) for a, b in zip(dims[:-1], dims[1:])))
        self.classifier = nn.Linear(dims[-1], num_classes)

    def forward(self, out: BackboneOutput) -> Tensor:
        return self.classify(out.stages[-1].feat)

    def classify(self, feat: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of a feature set ``[B, M, in_channels]`` (any backbone's)."""
        pooled = torch.cat([feat.amax(dim=1), feat.mean(dim=1)], dim=-1)  # (B, 2C)
        return self.classifier(self.mlp(pooled))


def interpolate(pos_to: Tensor, pos_from: Tensor, feat_from: Tensor, k: int, eps: float = 1e-8) -> Tensor:
    """Inverse-distance interpolation from the k nearest ``pos_from`` points (PointNet++ feature propagation).

    ``f(p) = Σ_j w_j f_j / Σ_j w_j`` with ``w_j = 1 / (‖p − p_j‖ + eps)`` over the k nearest j;
    k is capped at the number of source points.

    Shapes: pos_to ``[B, N, 3]``, pos_from ``[B, M, 3]``, feat_from ``[B, M, C]`` → ``[B, N, C]``.
    """
    idx = knn(pos_to, pos_from, min(k, pos_from.shape[1]))  # (B, N, k)
    dist = (gather(pos_from, idx) - pos_to.unsqueeze(2)).norm(dim=-1)  # (B, N, k)
    w = 1.0 / (dist + eps)
    w = w / w.sum(dim=-1, keepdim=True)
    return (gather(feat_from, idx) * w.unsqueeze(-1)).sum(dim=2)


class SegmentationHead(nn.Module):
    """Per-point logits by propagating features back through the stages (docs/operator.md §4 choice).

    From the last stage up to the input points: interpolate the coarse features onto the finer level
    (inverse-distance, ``k_interp`` nearest), concatenate that level's own features (skip connection),
    ``Linear → LayerNorm → ReLU`` to ``hidden``. At the input points the one-hot object category is
    concatenated too (when ``num_categories > 0``), then an MLP gives the part logits.

    Args:
        channels: the backbone's ``channels`` (stem width, then each stage width).
        num_parts: number of part labels; num_categories: object categories (0: no conditioning).

    Shapes: out :class:`BackboneOutput` over N points, category ``[B]`` long → logits ``[B, N, num_parts]``.
    """

    def __init__(
        self,
        channels: list[int],
        num_parts: int,
        num_categories: int = 0,
        hidden: int = 128,
        k_interp: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels {channels} must hold the stem width and at least one stage width")
        self.num_categories, self.k_interp = num_categories, k_interp
        coarse = [channels[-1]] + [hidden] * (len(channels) - 2)  # width arriving from the coarser level
        skips = channels[-2::-1]  # finer levels from the second-to-last stage up to the stem
        self.propagate = nn.ModuleList(
            _mlp_layer(c + s + (num_categories if i == len(skips) - 1 else 0), hidden)
            for i, (c, s) in enumerate(zip(coarse, skips))
        )
        self.classifier = nn.Sequential(_mlp_layer(hidden, hidden, dropout), nn.Linear(hidden, num_parts))

    def forward(self, out: BackboneOutput, category: Tensor | None = None) -> Tensor:
        if self.num_categories > 0:
            if category is None or category.shape != (out.pos.shape[0],):
                raise ValueError(f"category must be a [B] long tensor when num_categories > 0, got {category}")
            # a host sync, skipped while tracing for export (the graph cannot branch on values)
            if not torch.compiler.is_compiling() and (category.min() < 0 or category.max() >= self.num_categories):
                raise ValueError(f"category values must lie in [0, {self.num_categories}), got {category.tolist()}")
        levels = [(out.pos, out.feat)] + [(s.pos, s.feat) for s in out.stages]
        pos, feat = levels[-1]
        for i, (pos_fine, feat_fine) in enumerate(reversed(levels[:-1])):
            parts = [interpolate(pos_fine, pos, feat, self.k_interp), feat_fine]  # (B, N_fine, C), skip
            if self.num_categories > 0 and i == len(levels) - 2:  # input level: condition on the category
                onehot = F.one_hot(category, self.num_categories).to(feat_fine.dtype)  # (B, K)
                parts.append(onehot.unsqueeze(1).expand(-1, pos_fine.shape[1], -1))
            pos, feat = pos_fine, self.propagate[i](torch.cat(parts, dim=-1))
        return self.classifier(feat)  # (B, N, num_parts)
