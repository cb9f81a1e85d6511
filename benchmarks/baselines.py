"""Baselines of the centroid backbone, for the benchmark and for ``python -m app fit``.

Every backbone keeps the centroid backbone's contract (:class:`~models.backbone.CentroidBackbone`):
``forward_features(pos [B, N, 3], x [B, N, C_in] | None)`` → :class:`~models.backbone.BackboneOutput` (one
:class:`~models.backbone.StageOutput` per stage), ``forward`` → the last stage's features
``[B, M_S, out_channels]``, and the attributes ``in_channels``, ``channels``, ``out_channels`` and
``stages[s].sampling``; so each trains through the tasks with
``--model.init_args.backbone.class_path benchmarks.baselines.<Name>``. At the centroid backbone's width and depth
(stem 64, stages 128/256/512, k = 16) unless said otherwise:

- :class:`FullAttentionBackbone`: **full self-attention over all N_s inputs** at every stage (the O(N²)
  baseline) as a standard pre-norm Transformer layer (one LayerNorm per residual branch) with a learned
  position code, then the same FPS + BatchNorm KNN pooling down to M_s points as the centroid backbone.
- :class:`PointNet2SSG`: PointNet++ single-scale grouping (Qi et al., "PointNet++", arXiv 1706.02413) as a
  kNN variant at the centroid backbone's widths (set abstraction with torch_geometric's ``PointNetConv``).
- :class:`PointNet2SSGBall`: PointNet++ SSG **as published** for classification: ball query (radius 0.2 then
  0.4, at most 32 then 64 neighbours), BatchNorm shared MLPs 64-64-128, 128-128-256, then a group-all
  256-512-1024 layer.
- :class:`DGCNN`: dynamic graph CNN (Wang et al., arXiv 1801.07829) with torch_geometric's ``EdgeConv``;
  the graph of every layer is the kNN in *feature* space (brute force as a matmul, as DGCNN computes it, so
  that the FLOP counter sees it), so it keeps all N points and is O(N²) per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import EdgeConv, PointNetConv

from models.backbone import BackboneOutput, KNNInit, StageOutput
from models.centroid_attention import FeedForward
from models.ops import farthest_point_sample, gather, knn


def _stem(in_channels: int, width: int) -> nn.Sequential:
    """The centroid backbone's stem, ``[p, x] → width``."""
    return nn.Sequential(nn.Linear(3 + in_channels, width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width))


def seed_index(pos: Tensor, m: int, sampling: str) -> Tensor:
    """Indices ``[B, m]`` (long) of a stage's seeds among ``pos`` ``[B, N, 3]``: the model's exact FPS (``"fps"``)
    or the first m inputs (``"prefix"``: FPS-ordered inputs), exactly as the centroid backbone's stages pick them."""
    if sampling == "prefix":
        return torch.arange(m, device=pos.device).expand(pos.shape[0], m)
    return farthest_point_sample(pos, m, validate=False)


def seeds(pos: Tensor, m: int, sampling: str) -> Tensor:
    """Positions ``[B, m, 3]`` of a stage's seeds (see :func:`seed_index`)."""
    return gather(pos, seed_index(pos, m, sampling))


def ball_query(queries: Tensor, points: Tensor, radius: float, k: int, chunk_size: int = 1024) -> Tensor:
    """PointNet++'s ball query: the first ``k`` points (in index order) within ``radius`` of each query, the
    list padded with its first neighbour as in the published implementation (arXiv 1706.02413, §3.2).

    A query with no point in its ball gets index 0 everywhere (the published kernel's behaviour); the stages
    query at seeds taken from ``points``, so every ball holds at least its seed.

    Shapes: queries ``[B, M, 3]``, points ``[B, N, 3]`` → ``[B, M, k]`` long indices into the N points.
    """
    n = points.shape[1]
    order = torch.arange(n, device=points.device)
    out = []
    for q in queries.split(chunk_size, dim=1):
        # exact differences (no |q|² − 2q·p + |p|² rounding): a seed is always inside its own ball
        inside = torch.cdist(q, points, compute_mode="donot_use_mm_for_euclid_dist").square() < radius * radius
        rank = torch.where(inside, order, n)  # outside the ball: past every index
        first = torch.topk(rank, min(k, n), dim=-1, largest=False, sorted=True).values  # (B, m, k) ascending
        first = torch.where(first == n, first[..., :1], first)  # pad with the first neighbour
        out.append(torch.where(first == n, 0, first))
    idx = torch.cat(out, dim=1)
    return idx if k <= n else torch.cat([idx, idx[..., :1].expand(*idx.shape[:2], k - n)], dim=-1)


def feature_knn(x: Tensor, k: int, chunk_size: int = 1024) -> Tensor:
    """kNN in feature space (DGCNN's dynamic graph), brute force in chunks; ``[B, N, C]`` → ``[B, N, k]`` long.

    Distances as DGCNN computes them, ``|x_i|² − 2 x_i·x_j + |x_j|²`` (a matmul: its 2·N²·C FLOPs are counted).
    """
    sq = x.square().sum(-1)  # (B, N)
    return torch.cat(
        [torch.topk(q.square().sum(-1, keepdim=True) - 2 * q @ x.transpose(1, 2) + sq.unsqueeze(1), k, dim=-1,
                    largest=False).indices for q in x.split(chunk_size, dim=1)], dim=1,
    )


def _mlp(in_dim: int, out_dim: int, norm: str = "layer") -> nn.Sequential:
    """Linear → norm → ReLU → Linear on ``[rows, in_dim]``; ``norm``: LayerNorm (``"layer"``) or BatchNorm over
    the rows."""
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


class _Backbone(nn.Module):
    """The contract every baseline shares: input check, stem (optional), stages, :class:`BackboneOutput`."""

    def __init__(self, in_channels: int, channels: list[int], sampling: str, stem: bool = True) -> None:
        super().__init__()
        if sampling not in ("prefix", "fps"):
            raise ValueError(f"sampling must be 'prefix' or 'fps', got {sampling!r}")
        self.in_channels, self.channels, self.out_channels = in_channels, channels, channels[-1]
        self.stem = _stem(in_channels, channels[0]) if stem else None
        self.stages = nn.ModuleList()

    @staticmethod
    def stage_sampling(sampling: str, count: int) -> list[str]:
        """As the centroid backbone: with "fps" only the first stage samples, the later ones take prefixes."""
        return [sampling] + ["prefix"] * (count - 1)

    def embed(self, pos: Tensor, x: Tensor | None) -> Tensor:
        inputs = pos if x is None else torch.cat([pos, x], dim=-1)
        return inputs if self.stem is None else self.stem(inputs)  # (B, N, channels[0])

    def forward_features(self, pos: Tensor, x: Tensor | None = None, return_attention: bool = False) -> BackboneOutput:
        """pos ``[B, N, 3]``, x ``[B, N, in_channels]`` or ``None`` → :class:`BackboneOutput` (no attention maps:
        ``return_attention`` is accepted for the tasks' interface)."""
        if pos.dim() != 3 or pos.shape[-1] != 3:
            raise ValueError(f"pos must be [B, N, 3], got {list(pos.shape)}")
        if (x.shape[-1] if x is not None else 0) != self.in_channels:
            got = None if x is None else list(x.shape)
            raise ValueError(f"x must have in_channels={self.in_channels} channels, got {got}")
        feat = self.embed(pos, x)
        stages, p, f = [], pos, feat
        for stage in self.stages:
            out = stage(p, f)
            stages.append(out)
            p, f = out.pos, out.feat
        return BackboneOutput(pos, feat, stages)

    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        return self.forward_features(pos, x).stages[-1].feat  # (B, M_S, out_channels)


class SelfAttentionLayer(nn.Module):
    """A pre-norm Transformer layer over one set, applied with the same weights at every step:

        h ← h + γ_a ⊙ MHA(LN_a(h)),    h ← h + γ_f ⊙ FFN(LN_f(h))

    one LayerNorm per residual branch (as a standard block), ``γ``: LayerScale gains (``layer_scale``; ``None``
    for none), FFN of width ``ffn_ratio``·C as the centroid blocks' (``0``: no FFN branch, as the backbone
    configs' centroid blocks). Shapes: ``[B, N, C]`` → ``[B, N, C]``; attention weights ``[B, heads, N, N]``
    with ``return_attention``.
    """

    def __init__(self, dim: int, heads: int, layer_scale: float | None = 1e-3, ffn_ratio: float = 2.0) -> None:
        super().__init__()
        self.heads = heads
        hidden = round(dim * ffn_ratio)
        self.norm_attn = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim) if hidden else None
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = FeedForward(dim, hidden) if hidden else None
        self.gamma_attn = self.gamma_ffn = None
        if layer_scale is not None:
            self.gamma_attn = nn.Parameter(torch.full((dim,), float(layer_scale)))
            if hidden:
                self.gamma_ffn = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, h: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        B, N, C = h.shape
        q, k, v = self.qkv(self.norm_attn(h)).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        weights = None
        if return_attention:  # the plain path, for the probes
            weights = torch.softmax(q @ k.transpose(-1, -2) / (C // self.heads) ** 0.5, dim=-1)  # (B, h, N, N)
            att = weights @ v
        else:
            att = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C / heads)
        att = self.out(att.transpose(1, 2).reshape(B, N, C))
        h = h + (att if self.gamma_attn is None else self.gamma_attn * att)
        if self.ffn is None:
            return h, weights
        ffn = self.ffn(self.norm_ffn(h))
        return h + (ffn if self.gamma_ffn is None else self.gamma_ffn * ffn), weights


class FullAttentionStage(nn.Module):
    """N points → M points: project, add the position code, T steps of self-attention over all N (shared
    weights, like the centroid block's T steps), then FPS + KNN max-pool with the centroid backbone's BatchNorm
    KNN initialisation (``pool_layers`` per-pair layers, as its ``init_layers``).

    Position code: ``MLP(p_j)`` added to every token before attention. The centroid attention's relative code
    ``MLP(p_j − p_i)`` would be an ``[N, N, C]`` tensor over all pairs here; the absolute one is the form
    global point Transformers use.

    Shapes: pos ``[B, N, 3]``, x ``[B, N, in_dim]`` → :class:`StageOutput` with pos ``[B, M, 3]``, feat
    ``[B, M, out_dim]``.
    """

    def __init__(
        self, in_dim: int, out_dim: int, num_centroids: int, k: int, steps: int, heads: int, sampling: str,
        layer_scale: float | None = 1e-3, pool_norm: str = "batch", pool_layers: int = 1, ffn_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_centroids, self.k, self.steps, self.sampling = num_centroids, k, steps, sampling
        self.proj = nn.Linear(in_dim, out_dim)
        self.pos_code = nn.Sequential(nn.Linear(3, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))
        self.attention = SelfAttentionLayer(out_dim, heads, layer_scale, ffn_ratio)
        self.pool = KNNInit(out_dim, out_dim, pool_layers, pool_norm)

    def forward(self, pos: Tensor, x: Tensor) -> StageOutput:
        h = self.proj(x) + self.pos_code(pos)  # (B, N, C)
        for _ in range(self.steps):
            h, _ = self.attention(h)  # (B, N, C), O(N²) attention matrix per head
        idx = seed_index(pos, self.num_centroids, self.sampling)  # (B, M)
        seed_pos = gather(pos, idx)
        nbr = knn(seed_pos, pos, self.k, validate=False)
        return StageOutput(seed_pos, self.pool(h, pos, seed_pos, nbr), idx, nbr)


class FullAttentionBackbone(_Backbone):
    """Stem + stages of full self-attention (the O(N²) baseline of the centroid backbone).

    ``layer_scale``: the residual branches' LayerScale gains, started at 1e-3 like the centroid blocks'. Without
    them (``None``) the model does not train under the benchmark recipe: at initialisation the global attention
    is uniform, so every step adds the same cloud-wide mean to every token; the tokens collapse onto one vector
    and the gradients reaching the stem vanish (docs/operator.md §6). ``pool_norm``, ``pool_layers``: the KNN
    pooling's norm and per-pair layers (the centroid backbone's ``init_norm``, ``init_layers``); ``ffn_ratio``:
    the layers' FFN width (0: none), as the centroid blocks'. The learning benchmark sets all three as the
    centroid backbone's configs (configs/learning/model_full_attention.yaml).
    """

    def __init__(
        self,
        in_channels: int = 0,
        stem_width: int = 64,
        num_centroids: list[int] = [512, 256, 128],  # noqa: B006 -- a list for jsonargparse, never mutated
        widths: list[int] = [128, 256, 512],  # noqa: B006 -- a list for jsonargparse, never mutated
        k: int = 16,
        steps: int = 2,
        heads: int = 4,
        sampling: str = "fps",
        layer_scale: float | None = 1e-3,
        pool_norm: str = "batch",
        pool_layers: int = 1,
        ffn_ratio: float = 2.0,
    ) -> None:
        super().__init__(in_channels, [stem_width, *widths], sampling)
        self.stages.extend(
            FullAttentionStage(a, b, m, k, steps, heads, s, layer_scale, pool_norm, pool_layers, ffn_ratio)
            for a, b, m, s in zip(self.channels[:-1], widths, num_centroids, self.stage_sampling(sampling, len(widths)))
        )


class _ConvStage(nn.Module):
    """PointNet++ set abstraction by ``PointNetConv`` on kNN groups: FPS seeds, shared MLP on
    ``[x_j, p_j − p_i]``, max over the group. Shapes: pos ``[B, N, 3]``, x ``[B, N, C]`` → :class:`StageOutput`."""

    def __init__(self, in_dim: int, out_dim: int, num_centroids: int, k: int, sampling: str, norm: str) -> None:
        super().__init__()
        self.num_centroids, self.k, self.sampling = num_centroids, k, sampling
        self.conv = PointNetConv(_mlp(in_dim + 3, out_dim, norm), None, add_self_loops=False)

    def forward(self, pos: Tensor, x: Tensor) -> StageOutput:
        B, N, C = x.shape
        idx = seed_index(pos, self.num_centroids, self.sampling)
        seed_pos = gather(pos, idx)  # (B, M, 3)
        nbr = knn(seed_pos, pos, self.k, validate=False)
        out = self.conv((x.reshape(B * N, C), None), (pos.reshape(-1, 3), seed_pos.reshape(-1, 3)), _edge_index(nbr, N))
        return StageOutput(seed_pos, out.view(B, self.num_centroids, -1), idx, nbr)


class PointNet2SSG(_Backbone):
    """PointNet++ SSG, kNN variant: per stage FPS seeds, kNN groups, ``PointNetConv``, at the centroid backbone's
    widths and stem.

    ``norm``: the shared MLP's normalisation, LayerNorm of each pair (``"layer"``, the benchmark's default, as the
    centroid backbone's LayerNorm KNN initialisation) or BatchNorm over the pairs of a batch (``"batch"``).
    """

    def __init__(
        self,
        in_channels: int = 0,
        stem_width: int = 64,
        num_centroids: list[int] = [512, 256, 128],  # noqa: B006 -- a list for jsonargparse, never mutated
        widths: list[int] = [128, 256, 512],  # noqa: B006 -- a list for jsonargparse, never mutated
        k: int = 16,
        sampling: str = "fps",
        norm: str = "layer",
    ) -> None:
        super().__init__(in_channels, [stem_width, *widths], sampling)
        self.stages.extend(
            _ConvStage(a, b, m, k, s, norm)
            for a, b, m, s in zip(self.channels[:-1], widths, num_centroids, self.stage_sampling(sampling, len(widths)))
        )


def _shared_mlp(dims: list[int]) -> nn.Sequential:
    """PointNet's shared MLP as published: (Linear → BatchNorm over all rows → ReLU) per layer, ``[rows, dims[0]]``."""
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class BallGroupStage(nn.Module):
    """One published set abstraction: FPS seeds, ball query (radius, at most k), shared MLP on
    ``[p_j − p_i, x_j]``, max over the group; ``radius=None`` groups all N points around the origin (the last
    layer of the classifier: one output point).

    Shapes: pos ``[B, N, 3]``, x ``[B, N, C]`` → :class:`StageOutput` with ``[B, M, 3]``, ``[B, M, dims[-1]]``
    (M = 1 when grouping all).
    """

    def __init__(self, dims: list[int], num_centroids: int, radius: float | None, k: int, sampling: str) -> None:
        super().__init__()
        self.num_centroids, self.radius, self.k, self.sampling = num_centroids, radius, k, sampling
        self.mlp = _shared_mlp(dims)

    def forward(self, pos: Tensor, x: Tensor) -> StageOutput:
        B, N, _ = pos.shape
        if self.radius is None:  # group all
            idx = torch.zeros(B, 1, dtype=torch.long, device=pos.device)
            nbr = torch.arange(N, device=pos.device).expand(B, 1, N)
            seed_pos, rel = pos.new_zeros(B, 1, 3), pos.unsqueeze(1)  # (B, 1, N, 3)
        else:
            idx = seed_index(pos, self.num_centroids, self.sampling)
            seed_pos = gather(pos, idx)  # (B, M, 3)
            nbr = ball_query(seed_pos, pos, self.radius, self.k)  # (B, M, k)
            rel = gather(pos, nbr) - seed_pos.unsqueeze(2)  # (B, M, k, 3)
        grouped = torch.cat([rel, gather(x, nbr)], dim=-1) if x.shape[-1] else rel  # (B, M, k, 3 + C)
        feat = self.mlp(grouped.flatten(0, 2)).view(*grouped.shape[:3], -1).amax(dim=2)  # (B, M, C_out)
        return StageOutput(seed_pos, feat, idx, nbr)


class PointNet2SSGBall(_Backbone):
    """PointNet++ SSG classification backbone as published (arXiv 1706.02413, appendix B.1): no stem;
    SA(512 seeds, r = 0.2, 32 neighbours, MLP 64-64-128), SA(128, r = 0.4, 64, 128-128-256), SA(group all,
    256-512-1024), BatchNorm throughout. ``num_centroids``: the seeds of the two sampled layers (the benchmark
    scales them with N: N/2 and N/8, the published 512 and 128 at N = 1024). Radii are for clouds in the unit
    sphere, as the data modules normalise them.
    """

    def __init__(
        self,
        in_channels: int = 0,
        num_centroids: list[int] = [512, 128],  # noqa: B006 -- a list for jsonargparse, never mutated
        radii: list[float] = [0.2, 0.4],  # noqa: B006 -- a list for jsonargparse, never mutated
        k: list[int] = [32, 64],  # noqa: B006 -- a list for jsonargparse, never mutated
        mlps: list[list[int]] = [[64, 64, 128], [128, 128, 256], [256, 512, 1024]],  # noqa: B006 -- a list for jsonargparse, never mutated
        sampling: str = "fps",
    ) -> None:
        if not len(num_centroids) == len(radii) == len(k) == len(mlps) - 1:
            raise ValueError(f"num_centroids {num_centroids}, radii {radii}, k {k} need one entry per sampled layer "
                             f"and mlps {len(mlps)} one more (the group-all layer)")
        super().__init__(in_channels, [3 + in_channels] + [m[-1] for m in mlps], sampling, stem=False)
        ins = [in_channels] + [m[-1] for m in mlps[:-1]]
        specs = list(zip(num_centroids, radii, k, self.stage_sampling(sampling, len(radii)))) + [(1, None, 0, "fps")]
        self.stages.extend(
            BallGroupStage([3 + c, *dims], m, r, kk, s) for c, dims, (m, r, kk, s) in zip(ins, mlps, specs)
        )

    def embed(self, pos: Tensor, x: Tensor | None) -> Tensor:
        return pos.new_zeros(*pos.shape[:2], 0) if x is None else x  # the first layer groups [p_j − p_i, x_j]


class _EdgeStage(nn.Module):
    """One DGCNN layer: ``EdgeConv`` on the kNN graph of the current features; keeps all N points."""

    sampling = "fps"  # no seeds: every point is kept (the attribute the tasks check)

    def __init__(self, in_dim: int, out_dim: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.conv = EdgeConv(_mlp(2 * in_dim, out_dim))

    def forward(self, pos: Tensor, x: Tensor) -> StageOutput:
        B, N, _ = x.shape
        with torch.no_grad():  # the graph is not differentiated (as in DGCNN)
            nbr = feature_knn(x, self.k)  # (B, N, k)
        feat = self.conv(x.reshape(B * N, -1), _edge_index(nbr, N)).view(B, N, -1)
        return StageOutput(pos, feat, torch.arange(N, device=pos.device).expand(B, N), nbr)


class DGCNN(_Backbone):
    """DGCNN: ``EdgeConv`` layers (MLP on [x_i, x_j − x_i], max) on the kNN graph of the current features.

    ``num_centroids`` and ``sampling`` are accepted for a uniform constructor and ignored: DGCNN keeps all N
    points.
    """

    def __init__(
        self,
        in_channels: int = 0,
        stem_width: int = 64,
        num_centroids: list[int] = [512, 256, 128],  # noqa: B006 -- a list for jsonargparse, never mutated
        widths: list[int] = [128, 256, 512],  # noqa: B006 -- a list for jsonargparse, never mutated
        k: int = 16,
        sampling: str = "fps",
    ) -> None:
        super().__init__(in_channels, [stem_width, *widths], sampling)
        self.stages.extend(_EdgeStage(a, b, k) for a, b in zip(self.channels[:-1], widths))


class Classifier(nn.Module):
    """Backbone + classification head: ``pos [B, N, 3]`` → logits ``[B, num_classes]``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        return self.head.classify(self.backbone(pos, x))
