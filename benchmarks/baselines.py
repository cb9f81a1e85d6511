"""Baselines at the centroid backbone's width and depth, for the benchmark only.

Every backbone maps ``pos [B, N, 3]`` (+ optional ``x [B, N, C_in]``) to a set of features
``[B, M_S, out_channels]`` with the same stem width, stage widths and neighbourhood size k as
:class:`~models.backbone.CentroidBackbone`, so that a :class:`~models.heads.ClassificationHead` fits on
top of each and their costs compare like for like:

- :class:`FullAttentionBackbone`: the centroid backbone with **full self-attention over all N_s inputs**
  at every stage instead of centroid attention (the O(N²) baseline), then the same FPS + KNN pooling
  down to M_s points.
- :class:`PointNet2SSG`: PointNet++ single-scale grouping (Qi et al., "PointNet++", arXiv 1706.02413),
  set abstraction with torch_geometric's ``PointNetConv``; **choice**: kNN grouping (k) instead of a
  ball query, with our FPS/kNN (pyg-lib/torch_cluster are not required).
- :class:`DGCNN`: dynamic graph CNN (Wang et al., arXiv 1801.07829) with torch_geometric's ``EdgeConv``;
  the graph of every layer is the kNN in *feature* space (brute force, as DGCNN defines it), so it keeps
  all N points and is O(N²) per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import EdgeConv, PointNetConv

from models.backbone import KNNInit
from models.centroid_attention import CentroidAttentionBlock
from models.ops import farthest_point_sample, gather, knn


def _stem(in_channels: int, width: int) -> nn.Sequential:
    """The centroid backbone's stem, ``[p, x] → width``."""
    return nn.Sequential(nn.Linear(3 + in_channels, width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width))


def seeds(pos: Tensor, m: int, sampling: str) -> Tensor:
    """Positions ``[B, m, 3]`` of a stage's seeds: the model's exact FPS (``"fps"``) or the first m inputs
    (``"prefix"``: FPS-ordered inputs), exactly as the centroid backbone's stages pick them."""
    return pos[:, :m] if sampling == "prefix" else gather(pos, farthest_point_sample(pos, m, validate=False))


def _mlp(in_dim: int, out_dim: int, norm: str = "layer") -> nn.Sequential:
    """Linear → norm → ReLU → Linear on ``[rows, in_dim]``; ``norm``: LayerNorm (``"layer"``) or BatchNorm over the rows."""
    if norm not in ("layer", "batch"):
        raise ValueError(f"norm={norm!r} must be 'layer' or 'batch'")
    layer = nn.LayerNorm(out_dim) if norm == "layer" else nn.BatchNorm1d(out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim), layer, nn.ReLU(), nn.Linear(out_dim, out_dim))


def _edge_index(neighbors: Tensor, num_src: int) -> Tensor:
    """Batched neighbour lists → a PyG ``edge_index`` over flattened clouds.

    Shapes:
        neighbors: ``[B, M, k]`` long indices into clouds of ``num_src`` points.
        returns ``[2, B*M*k]``: row 0 the source (neighbour ``b*num_src + j``), row 1 the target ``b*M + i``.
    """
    B, M, k = neighbors.shape
    src = neighbors + (torch.arange(B, device=neighbors.device) * num_src).view(B, 1, 1)
    dst = torch.arange(B * M, device=neighbors.device).view(B, M, 1).expand(B, M, k)
    return torch.stack([src.reshape(-1), dst.reshape(-1)])


class _Stages(nn.Module):
    """Common constructor arguments and the ``[B, N, C]`` input check of the baselines."""

    def __init__(
        self, in_channels: int, stem_width: int, num_centroids: list[int], widths: list[int], k: int, sampling: str
    ) -> None:
        super().__init__()
        if sampling not in ("prefix", "fps"):
            raise ValueError(f"sampling must be 'prefix' or 'fps', got {sampling!r}")
        # as the centroid backbone: with "fps" only the first stage samples, the later ones take prefixes of its order
        self.stage_sampling = [sampling] + ["prefix"] * (len(num_centroids) - 1)
        if len(num_centroids) != len(widths):
            raise ValueError(f"num_centroids {num_centroids} and widths {widths} must have equal length")
        self.in_channels, self.k = in_channels, k
        self.num_centroids = num_centroids
        self.channels = [stem_width, *widths]
        self.out_channels = widths[-1]
        self.stem = _stem(in_channels, stem_width)

    def embed(self, pos: Tensor, x: Tensor | None) -> Tensor:
        return self.stem(pos if x is None else torch.cat([pos, x], dim=-1))  # (B, N, stem_width)


class FullAttentionStage(nn.Module):
    """N points → M points: project, T steps of self-attention over all N, then FPS + KNN max-pool.

    Self-attention is the centroid block with M = N, u = x and T = 1 (exactly a pre-norm Transformer
    layer, docs/operator.md §1), applied ``steps`` times with shared weights like the centroid block, with the
    same LayerScale gains (``layer_scale``, ``None`` for none).

    Shapes: pos ``[B, N, 3]``, x ``[B, N, in_dim]`` → pos ``[B, M, 3]``, feat ``[B, M, out_dim]``.
    """

    def __init__(
        self, in_dim: int, out_dim: int, num_centroids: int, k: int, steps: int, heads: int, sampling: str,
        layer_scale: float | None = 1e-3,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_centroids, self.k, self.steps, self.sampling = num_centroids, k, steps, sampling
        self.proj = nn.Linear(in_dim, out_dim)
        self.attention = CentroidAttentionBlock(
            out_dim, heads, steps=1, mode="global", pos_encoding=False, layer_scale=layer_scale
        )
        self.pool = KNNInit(out_dim, out_dim)

    def forward(self, pos: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.proj(x)  # (B, N, C)
        for _ in range(self.steps):
            h, _ = self.attention(h, h)  # (B, N, C), O(N²) attention matrix per head
        seed_pos = seeds(pos, self.num_centroids, self.sampling)  # (B, M, 3)
        nbr = knn(seed_pos, pos, self.k, validate=False)
        return seed_pos, self.pool(h, pos, seed_pos, nbr)


class FullAttentionBackbone(_Stages):
    """Stem + stages of full self-attention (the O(N²) baseline of the centroid backbone).

    ``layer_scale``: the residual branches' LayerScale gains, started at 1e-3 like the centroid blocks'. Without
    them (``None``) the model does not train under the benchmark recipe: at initialisation the global attention
    is uniform, so every step adds the same cloud-wide mean to every token; the tokens collapse onto one vector
    and the gradients reaching the stem vanish (docs/operator.md §6).
    """

    def __init__(
        self,
        in_channels: int = 0,
        stem_width: int = 64,
        num_centroids: list[int] = [512, 256, 128],  # noqa: B006 -- never mutated
        widths: list[int] = [128, 256, 512],  # noqa: B006
        k: int = 16,
        steps: int = 2,
        heads: int = 4,
        sampling: str = "fps",
        layer_scale: float | None = 1e-3,
    ) -> None:
        super().__init__(in_channels, stem_width, num_centroids, widths, k, sampling)
        self.stages = nn.ModuleList(
            FullAttentionStage(a, b, m, k, steps, heads, s, layer_scale)
            for a, b, m, s in zip(self.channels[:-1], widths, num_centroids, self.stage_sampling)
        )

    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        feat = self.embed(pos, x)
        for stage in self.stages:
            pos, feat = stage(pos, feat)
        return feat  # (B, M_S, out_channels)


class PointNet2SSG(_Stages):
    """PointNet++ SSG: per stage FPS seeds, kNN groups, ``PointNetConv`` (shared MLP on [x_j, p_j − p_i], max).

    ``norm``: the shared MLP's normalisation, LayerNorm of each pair (``"layer"``, the benchmark's default, as the
    centroid backbone's KNN initialisation) or BatchNorm over the pairs of a batch (``"batch"``, as the paper).
    """

    def __init__(
        self,
        in_channels: int = 0,
        stem_width: int = 64,
        num_centroids: list[int] = [512, 256, 128],  # noqa: B006 -- never mutated
        widths: list[int] = [128, 256, 512],  # noqa: B006
        k: int = 16,
        sampling: str = "fps",
        norm: str = "layer",
    ) -> None:
        super().__init__(in_channels, stem_width, num_centroids, widths, k, sampling)
        self.convs = nn.ModuleList(
            PointNetConv(_mlp(a + 3, b, norm), None, add_self_loops=False) for a, b in zip(self.channels[:-1], widths)
        )

    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        feat = self.embed(pos, x)
        for m, conv, sampling in zip(self.num_centroids, self.convs, self.stage_sampling):
            B, N, C = feat.shape
            seed_pos = seeds(pos, m, sampling)  # (B, M, 3)
            edges = _edge_index(knn(seed_pos, pos, self.k, validate=False), N)
            out = conv((feat.reshape(B * N, C), None), (pos.reshape(-1, 3), seed_pos.reshape(-1, 3)), edges)
            pos, feat = seed_pos, out.view(B, m, -1)
        return feat  # (B, M_S, out_channels)


def feature_knn(x: Tensor, k: int, chunk_size: int = 1024) -> Tensor:
    """kNN in feature space (DGCNN's dynamic graph), brute force in chunks; ``[B, N, C]`` → ``[B, N, k]`` long."""
    return torch.cat(
        [torch.topk(torch.cdist(q, x), k, dim=-1, largest=False).indices for q in x.split(chunk_size, dim=1)], dim=1
    )


class DGCNN(_Stages):
    """DGCNN: ``EdgeConv`` layers (MLP on [x_i, x_j − x_i], max) on the kNN graph of the current features.

    ``num_centroids`` is accepted for a uniform constructor and ignored: DGCNN keeps all N points.
    """

    def __init__(
        self,
        in_channels: int = 0,
        stem_width: int = 64,
        num_centroids: list[int] = [512, 256, 128],  # noqa: B006 -- never mutated
        widths: list[int] = [128, 256, 512],  # noqa: B006
        k: int = 16,
        sampling: str = "fps",
    ) -> None:
        super().__init__(in_channels, stem_width, num_centroids, widths, k, sampling)
        self.convs = nn.ModuleList(EdgeConv(_mlp(2 * a, b)) for a, b in zip(self.channels[:-1], widths))

    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        feat = self.embed(pos, x)
        B, N, _ = feat.shape
        for conv in self.convs:
            with torch.no_grad():  # the graph is not differentiated (as in DGCNN)
                edges = _edge_index(feature_knn(feat, self.k), N)
            feat = conv(feat.reshape(B * N, -1), edges).view(B, N, -1)
        return feat  # (B, N, out_channels)


class Classifier(nn.Module):
    """Backbone + classification head: ``pos [B, N, 3]`` → logits ``[B, num_classes]``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        return self.head.classify(self.backbone(pos, x))
