"""The centroid-transformer backbone: a point-wise stem, then S stages N_s points → M_s centroids.

Wu, Liu & Liu, "Centroid Transformers: Learning to Abstract with Attention", arXiv 2102.08606 (§4 of
``docs/operator.md``). Each stage = KNN initialisation of the centroids (§2) + T steps of centroid attention
(§1, local by default, §3) + optional self-attention blocks among the centroids.

Clouds in a batch share one size N: the data side resamples every cloud to a fixed N (no padding mask here),
in any point order. With ``sampling="fps"`` (the default) the first stage picks its seeds by exact farthest
point sampling and every later stage takes a prefix of that order (FPS's prefix property), so the output
does not depend on the input's point order; ``sampling="prefix"`` is the contract for clouds ordered offline
(docs/operator.md §2, docs/batch.md §5).

Shapes:
    pos ``[B, N, 3]``, x ``[B, N, in_channels]`` (or ``None``) → stage s: pos ``[B, M_s, 3]``, feat
    ``[B, M_s, widths[s]]``; ``forward`` returns the last stage's feat ``[B, M_S, widths[-1]]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from models.centroid_attention import CentroidAttentionBlock, Mode, hard_assignment
from models.ops import farthest_point_sample, flat_index, gather, knn, random_sample
from models.pairs import Kernel, knn_batchnorm_max_pool, knn_max_pool
from models.spatial import locality_order

Sampling = Literal["prefix", "fps", "random"]
InitNorm = Literal["layer", "batch"]


@dataclass
class StageOutput:
    """What one stage produces; everything a caller (head, picture, logger) may need."""

    pos: Tensor  # [B, M, 3] centroid positions (= seed positions)
    feat: Tensor  # [B, M, C] centroid features after the stage
    seed_idx: Tensor  # [B, M] long, index of each centroid's seed among the stage's inputs
    neighbors: Tensor  # [B, M, k] long, kNN of each centroid among the stage's inputs
    assignment: Tensor | None = None  # [B, N_in] long, centroid of each input (return_attention=True)
    attention: Tensor | None = None  # [B, heads, M, N_in] (global) / [B, heads, M, k_attn] (local), last step


@dataclass
class BackboneOutput:
    pos: Tensor  # [B, N, 3] input points
    feat: Tensor  # [B, N, stem_width] stem features
    stages: list[StageOutput]


def _check_sizes(stage: int, n_in: int, m: int, k: int, k_attn: int) -> None:
    if m > n_in:
        raise ValueError(f"stage {stage}: num_centroids={m} is larger than its number of inputs N={n_in}")
    for name, value in (("k", k), ("k_attn", k_attn)):
        if value > n_in:
            raise ValueError(f"stage {stage}: {name}={value} is larger than its number of inputs N={n_in}")


def _rows(t: Tensor, order: Tensor) -> Tensor:
    """``t`` ``[B, M, ...]`` with its rows taken in ``order`` ``[B, M]`` long (per cloud)."""
    return t.gather(1, order.view(*order.shape, *[1] * (t.dim() - 2)).expand_as(t))


class KNNInit(nn.Module):
    """Initial centroid features from the k nearest inputs of each seed (docs/operator.md §2 choice).

        z_ij = W_x x_j + W_p (p_j − p_i)
        u_i⁰ = max_{j ∈ kNN(i)} N(z_ij)                                  (layers = 1)
        u_i⁰ = max_{j ∈ kNN(i)} W_h ReLU(N(z_ij)) + b_h                   (layers = 2, PointNet++'s set abstraction)

    a PointNet on each neighbourhood whose last per-pair operation is the max-pool: nothing follows it (a ReLU and
    a projection after the pool made every model that used it learn two to three times more slowly on the hard
    task, docs/operator.md §6). ``W_x x`` is computed once on the N inputs. N is a BatchNorm of each channel over
    the B·M·k pairs (``norm="batch"``, the default) or a LayerNorm of each pair (``norm="layer"``). With one layer
    the per-pair part runs as the chunked :func:`models.pairs.knn_max_pool`, which keeps no ``(B, M, k, C)``
    tensor for backward (docs/operator.md §7). ``layers=2`` adds the per-pair layer W_h (M·k·C² operations, as
    PointNet++'s set abstraction), written with autograd.

    With a BatchNorm and one layer the pairs are never built: z_ij = b_j − c_i with b_j = W_x x_j + W_p p_j and
    c_i = W_p p_i, and the max of a per-channel affine map is taken at one neighbour
    (:func:`models.pairs.knn_batchnorm_max_pool`). Any BatchNorm takes that path, the ``nn.SyncBatchNorm`` that
    Lightning's ``sync_batchnorm`` swaps in included (statistics over the pairs of every process).

    Shapes: x ``[B, N, C_in]``, points ``[B, N, 3]`` (p_j), centres ``[B, M, 3]`` (p_i), neighbors
    ``[B, M, k]`` → ``[B, M, C]``.

    ``kernel``: of the per-pair max-pools (``models.pairs``; ``"gathered"``: pure torch ops, for export).
    """

    def __init__(
        self, in_dim: int, out_dim: int, layers: int = 1, norm: InitNorm = "layer", kernel: Kernel = "auto"
    ) -> None:
        super().__init__()
        if layers not in (1, 2):
            raise ValueError(f"KNN initialisation layers={layers} must be 1 or 2")
        if norm not in ("layer", "batch"):
            raise ValueError(f"KNN initialisation norm={norm!r} must be 'layer' or 'batch'")
        self.kernel = kernel
        self.embed_x = nn.Linear(in_dim, out_dim)
        self.embed_pos = nn.Linear(3, out_dim, bias=False)
        self.norm = _pair_norm_layer(out_dim, norm)
        self.hidden = nn.Sequential(nn.ReLU(), nn.Linear(out_dim, out_dim)) if layers == 2 else None

    def forward(self, x: Tensor, points: Tensor, centres: Tensor, neighbors: Tensor) -> Tensor:
        """x ``[B, N, C_in]`` at ``points`` ``[B, N, 3]``, centres ``[B, M, 3]``, neighbors ``[B, M, k]``
        → ``[B, M, C]``."""
        source = self.embed_x(x)  # (B, N, C)
        (B, N, C), (M, k) = source.shape, neighbors.shape[1:]
        index = flat_index(neighbors, N).reshape(B * M, k)
        if self.hidden is None and isinstance(self.norm, _BatchNorm):  # no pair is built (docs/operator.md §7)
            pooled = knn_batchnorm_max_pool(source.reshape(B * N, C), points.reshape(B * N, 3),
                                            centres.reshape(B * M, 3), self.embed_pos.weight, self.norm, index,
                                            kernel=self.kernel)
            return pooled.view(B, M, C)
        rel = gather(points, neighbors) - centres.unsqueeze(2)  # p_j − p_i, (B, M, k, 3)
        if self.hidden is not None:
            h = _pair_norm(self.norm, gather(source, neighbors) + self.embed_pos(rel))  # (B, M, k, C)
            return self.hidden(h).amax(dim=2)  # max-pool over the k neighbours, (B, M, C)
        # max_k LN(z_ij) without keeping the (B, M, k, C) pairs
        pooled = knn_max_pool(source.reshape(B * N, C), rel.reshape(B * M, k, 3), self.embed_pos.weight, self.norm,
                              index, kernel=self.kernel)
        return pooled.view(B, M, C)


def _pair_norm_layer(dim: int, kind: InitNorm) -> nn.Module:
    """The per-pair normalisation of :class:`KNNInit`: LayerNorm over the C channels of each pair (``"layer"``),
    or BatchNorm of each channel over all B·M·k pairs of the batch (``"batch"``; running statistics in eval
    mode, as in PointNet++'s shared MLPs)."""
    return nn.LayerNorm(dim) if kind == "layer" else nn.BatchNorm1d(dim)


def _pair_norm(norm: nn.Module, h: Tensor) -> Tensor:
    """``norm`` on pair features ``[..., C]`` (a BatchNorm sees them as ``[pairs, C]``)."""
    if isinstance(norm, _BatchNorm):
        return norm(h.reshape(-1, h.shape[-1])).view(h.shape)
    return norm(h)


@contextlib.contextmanager
def _running_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Every BatchNorm buffer of ``module`` (running mean, variance, batch count) as it was on entering."""
    buffers = [b for m in module.modules() if isinstance(m, _BatchNorm) for b in m.buffers(recurse=False)]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in zip(buffers, saved):
                b.copy_(value)


@dataclass(frozen=True)
class StageSettings:
    """What every stage of a backbone shares, stated once (YAML: ``stage: {k: 16, steps: 2, ...}``).

    Attributes:
        k: neighbours for the KNN initialisation; k_attn: neighbours each centroid attends to in local mode
            (default k; docs/operator.md §3).
        steps, heads, mode, pos_encoding, clustering_norm, ffn_ratio, dropout, layer_scale: of the
            :class:`~models.centroid_attention.CentroidAttentionBlock` (LayerScale 1e-3 by default: the stage
            starts as its KNN initialisation, docs/operator.md §6).
        self_attention_blocks: standard pre-norm self-attention layers among the M centroids afterwards (global,
            no position code: centroid attention with u = x and T = 1 is exactly that).
        normalize_offsets: divide the offsets ``p_j − p_i`` by the cloud's mean neighbourhood radius, so the
            position codes see O(1) inputs at every stage whatever the cloud's scale (docs/operator.md §6).
        init_layers: per-pair layers of the :class:`KNNInit` (1 or 2).
        init_norm: per-pair normalisation of the :class:`KNNInit`: ``"batch"`` (default: BatchNorm of each
            channel over the B·M·k pairs of a batch, running statistics in eval mode) or ``"layer"`` (LayerNorm of
            each pair, the choice before issue 12), docs/operator.md §6.
        recompute: when gradients are recorded, keep only the stage's inputs and recompute its activations in the
            backward pass (activation checkpointing): for clouds too large for memory, at the price of a second
            forward pass (BENCHMARKS.md, variants). Off by default: speed first. The BatchNorms' running
            statistics are updated once per training step: the recomputation puts them back as it found them.
        kernel: the per-pair kernel of the KNN initialisation and the local attention (``models.pairs``:
            ``"auto"`` chooses from the device; ``"gathered"`` is pure torch ops, for ``torch.export`` and ONNX).
    """

    k: int = 16
    k_attn: int | None = None
    steps: int = 2
    heads: int = 4
    mode: Mode = "local"
    self_attention_blocks: int = 0
    clustering_norm: bool = False
    pos_encoding: bool = True
    normalize_offsets: bool = False
    ffn_ratio: float = 2.0
    dropout: float = 0.0
    layer_scale: float | None = 1e-3
    init_layers: int = 1
    init_norm: InitNorm = "batch"
    recompute: bool = False
    kernel: Kernel = "auto"


class CentroidStage(nn.Module):
    """N points → M centroids: seeds + KNN init + centroid attention + self-attention among the centroids.

    Args:
        in_dim, out_dim: feature width of the stage's inputs and of its centroids.
        num_centroids: M.
        settings: k, steps, heads, ... (:class:`StageSettings`).
        sampling: seeds by exact FPS of the stage's inputs (``"fps"``, order-independent: started at the
            point farthest from the mean; the backbone runs it in its first stage only and gives the later
            stages ``"prefix"``), the first M inputs (``"prefix"``: a contract that the inputs are in
            farthest-point order), or ``"random"`` (docs/operator.md §2 choice).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_centroids: int,
        settings: StageSettings = StageSettings(),
        sampling: Sampling = "fps",
    ) -> None:
        super().__init__()
        if sampling not in ("prefix", "fps", "random"):
            raise ValueError(f"sampling must be 'prefix', 'fps' or 'random', got {sampling!r}")
        k, k_attn = settings.k, settings.k_attn
        if num_centroids < 1 or k < 1 or (k_attn is not None and k_attn < 1):
            raise ValueError(f"num_centroids={num_centroids}, k={k}, k_attn={k_attn} must all be at least 1")
        self.settings = settings
        self.num_centroids, self.k, self.k_attn = num_centroids, k, k if k_attn is None else k_attn
        self.mode, self.sampling = settings.mode, sampling
        self.normalize_offsets, self.recompute = settings.normalize_offsets, settings.recompute
        self.init = KNNInit(in_dim, out_dim, settings.init_layers, settings.init_norm, settings.kernel)
        block = dict(ffn_ratio=settings.ffn_ratio, dropout=settings.dropout, layer_scale=settings.layer_scale,
                     kernel=settings.kernel)
        self.attention = CentroidAttentionBlock(
            out_dim, settings.heads, settings.steps, mode=settings.mode, pos_encoding=settings.pos_encoding,
            clustering_norm=settings.clustering_norm, kv_dim=in_dim, **block,
        )
        self.self_attention = nn.ModuleList(
            CentroidAttentionBlock(out_dim, settings.heads, 1, mode="global", pos_encoding=False, **block)
            for _ in range(settings.self_attention_blocks)
        )

    def extra_repr(self) -> str:
        return (f"num_centroids={self.num_centroids}, k={self.k}, k_attn={self.k_attn}, sampling={self.sampling}, "
                f"normalize_offsets={self.normalize_offsets}")

    def seeds(self, pos: Tensor) -> Tensor:
        """Indices ``[B, M]`` long of the stage's seeds among its inputs ``pos [B, N, 3]``."""
        if self.sampling == "prefix":  # FPS's prefix property: the first M of an FPS order are an FPS
            return torch.arange(self.num_centroids, device=pos.device).expand(pos.shape[0], -1)
        if self.sampling == "fps":
            return farthest_point_sample(pos, self.num_centroids, validate=False)
        return random_sample(pos, self.num_centroids)

    def forward(self, pos: Tensor, x: Tensor, return_attention: bool = False, stage: int = 1) -> StageOutput:
        """pos ``[B, N, 3]``, x ``[B, N, in_dim]`` → :class:`StageOutput` with M centroids of width out_dim."""
        if self.recompute and torch.is_grad_enabled():  # nothing inside is kept for backward but the inputs
            return checkpoint(self._forward, pos, x, return_attention, stage, use_reentrant=False,
                              context_fn=self._checkpoint_contexts)
        return self._forward(pos, x, return_attention, stage)

    def _checkpoint_contexts(self) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """The contexts of the checkpointed forward and of its recomputation in backward: the recomputation leaves
        the running statistics as the forward left them (updated once per step)."""
        return contextlib.nullcontext(), _running_statistics_kept(self)

    def _forward(self, pos: Tensor, x: Tensor, return_attention: bool, stage: int) -> StageOutput:
        n_in = pos.shape[1]
        _check_sizes(stage, n_in, self.num_centroids, self.k, self.k_attn)
        seed_idx = self.seeds(pos)  # (B, M)
        seed_pos = gather(pos, seed_idx) if self.sampling != "prefix" else pos[:, : self.num_centroids]  # (B, M, 3)
        # centroids stay at their seeds (docs/operator.md §2 choice)
        nearest = knn(seed_pos, pos, max(self.k, self.k_attn), validate=False)  # (B, M, max(k, k_attn)), nearest first
        rel = gather(pos, nearest) - seed_pos.unsqueeze(2)  # p_j − p_i, (B, M, max(k, k_attn), 3)
        points, centres = pos, seed_pos
        if self.normalize_offsets:  # per cloud: the mean over centroids of the farthest neighbour's distance
            radius = rel[:, :, : self.k].norm(dim=-1).amax(-1).mean(-1)  # (B,)
            inverse_radius = radius.clamp_min(torch.finfo(rel.dtype).eps).reciprocal().view(-1, 1, 1)
            rel = rel * inverse_radius.unsqueeze(-1)
            points, centres = pos * inverse_radius, seed_pos * inverse_radius
        neighbors = nearest[..., : self.k]
        # Rows (centroids) along a Z-order curve while the per-pair work runs: consecutive rows share most of
        # their neighbours, which are then read from the cache (docs/operator.md §7). Undone below; exact.
        order = locality_order(seed_pos)  # (B, M)
        nearest, rel = _rows(nearest, order), _rows(rel, order)
        attn_neighbors = nearest[..., : self.k_attn]
        u = self.init(x, points, _rows(centres, order), nearest[..., : self.k])  # (B, M, C), rows in `order`
        if self.mode == "local":
            attn_rel = rel[:, :, : self.k_attn]
        else:  # global: every input is a neighbour, (B, M, N, 3)
            attn_rel = points.unsqueeze(1) - _rows(centres, order).unsqueeze(2)
        u, weights = self.attention(u, x, neighbors=attn_neighbors, return_attention=return_attention, rel_pos=attn_rel)
        inverse = torch.argsort(order, dim=1)
        u, attn_neighbors = _rows(u, inverse), _rows(attn_neighbors, inverse)
        weights = None if weights is None else _rows(weights.transpose(1, 2), inverse).transpose(1, 2)  # (B, h, M, ·)
        for block in self.self_attention:
            u, _ = block(u, u)
        assignment = None
        if weights is not None:
            index = attn_neighbors if self.mode == "local" else None
            assignment = hard_assignment(weights, index, n_in)  # (B, N_in), -1 where no centroid looks
            orphan = assignment < 0
            if orphan.any():  # inputs outside every neighbourhood go to the nearest centroid by position
                assignment = torch.where(orphan, knn(pos, seed_pos, 1).squeeze(-1), assignment)
        return StageOutput(seed_pos, u, seed_idx, neighbors, assignment, weights)


class CentroidBackbone(nn.Module):
    """Stem + S centroid stages (docs/operator.md §4). Default: 1024 → 512 → 256 → 128, widths 64 → 128 → 256 → 512.

    Args:
        in_channels: per-point input features besides xyz (0: positions only, 3: normals).
        stem_width: width of the point-wise stem MLP on ``[p, x]``.
        num_centroids, widths: M_s and C_s of each stage (same length S).
        stage: the settings every stage shares (:class:`StageSettings`: k, steps, heads, mode, kernel, ...).
        sampling: of the seeds, see :class:`CentroidStage`; with ``"fps"`` only the first stage samples, the
            later ones take prefixes of its FPS order (exactly their FPS, by the prefix property: docs/operator.md §2).

    Attributes:
        out_channels: ``widths[-1]``; channels: ``[stem_width, *widths]``.
    """

    def __init__(
        self,
        in_channels: int = 0,
        stem_width: int = 64,
        num_centroids: list[int] = [512, 256, 128],  # noqa: B006 -- lists of ints for jsonargparse, never mutated
        widths: list[int] = [128, 256, 512],  # noqa: B006 -- lists of ints for jsonargparse, never mutated
        stage: StageSettings = StageSettings(),
        sampling: Sampling = "fps",
    ) -> None:
        super().__init__()
        if len(num_centroids) != len(widths) or not widths:
            raise ValueError(f"num_centroids {num_centroids} and widths {widths} must be non-empty and of equal length")
        if in_channels < 0:
            raise ValueError(f"in_channels={in_channels} must be >= 0")
        self.in_channels = in_channels
        self.channels = [stem_width, *widths]
        self.out_channels = widths[-1]
        self.stem = nn.Sequential(
            nn.Linear(3 + in_channels, stem_width), nn.LayerNorm(stem_width), nn.ReLU(),
            nn.Linear(stem_width, stem_width),
        )
        later = "prefix" if sampling == "fps" else sampling  # stage s > 1: the prefix of stage 1's FPS order
        self.stages = nn.ModuleList(
            CentroidStage(c_in, c_out, m, stage, sampling if s == 0 else later)
            for s, (c_in, c_out, m) in enumerate(zip(self.channels[:-1], widths, num_centroids))
        )

    def _check_input(self, pos: Tensor, x: Tensor | None) -> None:
        if pos.dim() != 3 or pos.shape[-1] != 3:
            raise ValueError(f"pos must have shape [B, N, 3], got {tuple(pos.shape)}")
        if pos.shape[1] == 0:
            raise ValueError("pos is empty: a point cloud needs at least one point")
        if not torch.compiler.is_compiling() and not torch.isfinite(pos).all():  # one host sync per forward
            raise ValueError("pos contains NaN or infinite coordinates")
        if self.in_channels == 0 and x is not None:
            raise ValueError(f"x was given with shape {tuple(x.shape)} but the backbone has in_channels=0")
        if self.in_channels > 0:
            expected = (*pos.shape[:2], self.in_channels)
            if x is None or tuple(x.shape) != expected:
                got = None if x is None else tuple(x.shape)
                raise ValueError(f"x must have shape [B, N, in_channels] = {expected}, got {got}")

    def forward_features(self, pos: Tensor, x: Tensor | None = None, return_attention: bool = False) -> BackboneOutput:
        """pos ``[B, N, 3]``, x ``[B, N, in_channels]`` or ``None`` → :class:`BackboneOutput`."""
        self._check_input(pos, x)
        stem_in = pos if x is None else torch.cat([pos, x], dim=-1)  # (B, N, 3 + in_channels)
        feat = self.stem(stem_in)  # (B, N, stem_width)
        stages, p, f = [], pos, feat
        for s, stage in enumerate(self.stages, start=1):
            out = stage(p, f, return_attention=return_attention, stage=s)
            stages.append(out)
            p, f = out.pos, out.feat
        return BackboneOutput(pos, feat, stages)

    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        """The last stage's centroid features ``[B, M_S, out_channels]``."""
        return self.forward_features(pos, x).stages[-1].feat
