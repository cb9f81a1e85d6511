"""Per-pair work (M centroids × K neighbours) as chunked autograd functions: no per-pair tensor is kept.

Written with autograd, every per-pair step (gathering the neighbours' features, adding a position term,
normalising, multiplying by a query) writes a ``[R, K, C]`` tensor, one pass over memory much larger than
the cache, and keeps several of them for the backward pass. The functions here process the rows (R = B·M
centroids) in chunks whose per-pair tensors fit in the cache, keep only per-row results for backward, and
in backward gather each chunk again and add the feature gradients straight into the ``[S, C]`` sources
(docs/operator.md §7). Exact: the same sums in another order, tested in float64 against the autograd
formulas and with ``gradcheck``.

**Local attention** (:func:`local_attention`). Each row attends to K inputs given by a flat index into the
shared keys and values. Per head, with the position code's hidden layer ``r_rk`` (width e) and
``q̃_r = W_2ᵀ q_r`` (docs/operator.md §2, §7):

    l_rk = q_r · k_{j(r,k)} + q̃_r · r_rk,   a_rk = softmax_k(s · l_rk)
    out_r = Σ_k a_rk v_{j(r,k)},            mixed_r = Σ_k a_rk r_rk

Forward keeps the weights ``a`` ``[R, K, h]`` (1/d of a per-pair tensor).

**KNN max-pool** (:func:`knn_max_pool`), the per-pair part of the KNN initialisation (docs/operator.md §2):
``y_r = max_k N(x_{j(r,k)} + W_p o_rk)`` per channel, with the offsets ``o_rk = p_j − p_i`` and N a LayerNorm
of each pair or a BatchNorm of each channel over all pairs. Forward keeps per-row results only; backward
rebuilds the chunk's pairs and routes each channel's gradient to the neighbours that reach the maximum
(shared among ties, as autograd's ``amax`` does). With a BatchNorm the max of the affine map per channel is
taken at the extreme pair (max or min, by the sign of its gain), and the statistics' backward terms are sums
over rows, so no pair is kept either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: Elements of one chunk's gathered keys on CPU (R_chunk·K·C): 2^19 floats = 2 MiB, about an L2 cache.
CPU_CHUNK_ELEMENTS = 1 << 19


def chunk_rows(rows: int, per_row: int, device: torch.device, max_rows: int | None) -> int:
    """Rows per chunk: cache-sized on CPU; on an accelerator as many as ``max_rows`` allows (fewer launches)."""
    limit = rows if max_rows is None else max_rows
    if device.type == "cpu":
        limit = min(limit, max(16, CPU_CHUNK_ELEMENTS // max(per_row, 1)))
    return max(1, min(rows, limit))


class _LocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, q_rel, key, value, rel, index, scale: float, chunk: int):  # noqa: ANN001, ANN205
        R, h, d = q.shape
        K = index.shape[1]
        out, weights = q.new_empty(R, h, d), q.new_empty(R, K, h)
        mixed = None if rel is None else q.new_empty(R, h, rel.shape[-1])
        for s in range(0, R, chunk):
            rows, flat = slice(s, s + chunk), index[s : s + chunk].reshape(-1)
            logits = (key.index_select(0, flat).view(-1, K, h, d) * q[rows].unsqueeze(1)).sum(-1)  # (c, K, h)
            if rel is not None:
                logits.baddbmm_(rel[rows], q_rel[rows])  # + q̃ · r
            a = (logits * scale).softmax(dim=1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
            weights[rows] = a
            out[rows] = (value.index_select(0, flat).view(-1, K, h, d) * a.unsqueeze(-1)).sum(1)
            if rel is not None:
                torch.bmm(a.transpose(1, 2), rel[rows], out=mixed[rows])
        ctx.save_for_backward(q, q_rel, key, value, rel, index, weights)
        ctx.scale, ctx.chunk = scale, chunk
        ctx.mark_non_differentiable(weights)
        return out, mixed, weights

    @staticmethod
    def backward(ctx, g_out, g_mixed, _g_weights):  # noqa: ANN001, ANN205
        q, q_rel, key, value, rel, index, weights = ctx.saved_tensors
        R, h, d = q.shape
        K, C = index.shape[1], h * d
        g_out = g_out.contiguous()
        g_q, g_key, g_value = torch.empty_like(q), torch.zeros_like(key), torch.zeros_like(value)
        g_q_rel = g_rel = None
        if rel is not None:
            g_mixed = g_mixed.contiguous() if g_mixed is not None else q.new_zeros(R, h, rel.shape[-1])
            g_q_rel, g_rel = torch.empty_like(q_rel), torch.empty_like(rel)
        for s in range(0, R, ctx.chunk):
            rows, flat = slice(s, s + ctx.chunk), index[s : s + ctx.chunk].reshape(-1)
            a, go = weights[rows], g_out[rows]
            g_a = (value.index_select(0, flat).view(-1, K, h, d) * go.unsqueeze(1)).sum(-1)  # (c, K, h)
            wide = flat.unsqueeze(1).expand(-1, C)  # scatter index over the C = h·d channels
            g_value.view(-1, C).scatter_add_(0, wide, (a.unsqueeze(-1) * go.unsqueeze(1)).view(-1, C))
            if rel is not None:
                gm = g_mixed[rows]
                g_a.baddbmm_(rel[rows], gm.transpose(1, 2))  # + r · g_mixed
                torch.bmm(a, gm, out=g_rel[rows])
            g_logits = a * (g_a - (a * g_a).sum(1, keepdim=True)) * ctx.scale  # softmax backward, (c, K, h)
            g_q[rows] = (key.index_select(0, flat).view(-1, K, h, d) * g_logits.unsqueeze(-1)).sum(1)
            g_key.view(-1, C).scatter_add_(0, wide, (g_logits.unsqueeze(-1) * q[rows].unsqueeze(1)).view(-1, C))
            if rel is not None:
                torch.bmm(rel[rows].transpose(1, 2), g_logits, out=g_q_rel[rows])
                g_rel[rows].baddbmm_(g_logits, q_rel[rows].transpose(1, 2))
        return g_q, g_q_rel, g_key, g_value, g_rel, None, None, None


def local_attention(
    q: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    scale: float,
    chunk: int,
    q_rel: Tensor | None = None,
    rel: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Softmax attention of each row's query on its K indexed keys, chunked over rows (module docstring).

    Shapes:
        q ``[R, h, d]``; key, value ``[S, h, d]`` (shared, indexed by ``index [R, K]`` long in ``[0, S)``);
        q_rel ``[R, e, h]`` and rel ``[R, K, e]``: the position-code terms, both or neither.
        returns ``out [R, h, d]``, ``mixed [R, h, e]`` (``None`` without rel) and the weights ``[R, K, h]``
        (not differentiable).

    Under autocast every input is cast to the widest of their dtypes; the softmax runs in float32 at least.
    """
    if (q_rel is None) != (rel is None):
        raise ValueError("q_rel and rel are the position-code terms: give both or neither")
    tensors = [t for t in (q, key, value, q_rel, rel) if t is not None]
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    cast = [None if t is None else t.to(dtype).contiguous() for t in (q, q_rel, key, value, rel)]
    with torch.autocast(q.device.type, enabled=False):
        return _LocalAttention.apply(*cast, index.contiguous(), scale, chunk)


class _KNNMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source, offsets, w_pos, weight, bias, index, eps: float, chunk: int):  # noqa: ANN001, ANN205
        R, K = index.shape
        C = source.shape[1]
        pooled = source.new_empty(R, C)
        for s in range(0, R, chunk):
            rows = slice(s, s + chunk)
            z = _pair_input(source, offsets[rows], w_pos, index[rows])  # (c, K, C)
            torch.amax(F.layer_norm(z, (C,), weight, bias, eps), dim=1, out=pooled[rows])
        ctx.save_for_backward(source, offsets, w_pos, weight, bias, index, pooled)
        ctx.eps, ctx.chunk = eps, chunk
        return pooled

    @staticmethod
    def backward(ctx, g_pooled):  # noqa: ANN001, ANN205
        source, offsets, w_pos, weight, bias, index, pooled = ctx.saved_tensors
        R, K = index.shape
        C = source.shape[1]
        g_pooled = g_pooled.contiguous()
        g_source, g_w_pos = torch.zeros_like(source), torch.zeros_like(w_pos)
        g_weight, g_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        g_offsets = torch.empty_like(offsets) if ctx.needs_input_grad[1] else None
        for s in range(0, R, ctx.chunk):
            rows, flat = slice(s, s + ctx.chunk), index[s : s + ctx.chunk].reshape(-1)
            z = _pair_input(source, offsets[rows], w_pos, index[rows])  # (c, K, C)
            y, mean, rstd = torch.native_layer_norm(z, (C,), weight, bias, ctx.eps)
            winner = y == pooled[rows].unsqueeze(1)  # (c, K, C); ties share the gradient, as amax's backward does
            share = g_pooled[rows] / winner.sum(1)  # (c, C)
            g_y = winner * share.unsqueeze(1)  # (a boolean product measured faster than torch.where)
            g_z, g_w, g_b = torch.ops.aten.native_layer_norm_backward(
                g_y, z, (C,), mean, rstd, weight, bias, [True, True, True]
            )  # fmt: skip
            g_weight += g_w
            g_bias += g_b
            g_flat = g_z.view(-1, C)
            g_source.scatter_add_(0, flat.unsqueeze(1).expand(-1, C), g_flat)
            g_w_pos.addmm_(g_flat.t(), offsets[rows].reshape(-1, 3))
            if g_offsets is not None:
                torch.matmul(g_z, w_pos, out=g_offsets[rows])
        return g_source, g_offsets, g_w_pos, g_weight, g_bias, None, None, None


def _pair_input(source: Tensor, offsets: Tensor, w_pos: Tensor, index: Tensor) -> Tensor:
    """``x_j + W_p o`` for a chunk: source ``[S, C]``, offsets ``[c, K, 3]``, index ``[c, K]`` → ``[c, K, C]``."""
    c, K = index.shape
    z = source.index_select(0, index.reshape(-1))  # (c·K, C)
    return z.addmm_(offsets.reshape(-1, 3), w_pos.t()).view(c, K, -1)


class _KNNMaxPoolBatchNorm(torch.autograd.Function):
    """max_k BN(z_rk) with BN an affine map per channel, y = a z + b (a = γ / σ, b = β − a μ): the max over k
    is a·max_k z + b where a ≥ 0 and a·min_k z + b where a < 0, so the pool only needs each row's extreme
    pair. Batch statistics (training) come from a first chunked pass; their backward terms reduce to sums
    over rows (docs/operator.md §7)."""

    @staticmethod
    def forward(ctx, source, offsets, w_pos, weight, bias, index, running_mean, running_var, eps: float, chunk: int):  # noqa: ANN001, ANN205
        R, K = index.shape
        C = source.shape[1]
        top, bottom = source.new_empty(R, C), source.new_empty(R, C)
        batch_stats = running_mean is None
        mean, m2, count = source.new_zeros(C), source.new_zeros(C), 0
        for s in range(0, R, chunk):
            rows = slice(s, s + chunk)
            z = _pair_input(source, offsets[rows], w_pos, index[rows])  # (c, K, C)
            torch.amax(z, dim=1, out=top[rows])  # (amax and amin measured faster than aminmax or var_mean)
            torch.amin(z, dim=1, out=bottom[rows])
            if batch_stats:  # Chan et al.'s pairwise update of mean and sum of squared deviations
                flat = z.view(-1, C)
                n_c = flat.shape[0]
                mean_c = flat.sum(0) / n_c
                m2_c = (flat - mean_c).square_().sum(0)
                delta = mean_c - mean
                mean += delta * (n_c / (count + n_c))
                m2 += m2_c + delta.square() * (count * n_c / (count + n_c))
                count += n_c
        var = m2 / count if batch_stats else running_var.clone()
        mean = mean if batch_stats else running_mean.clone()
        rstd = (var + eps).rsqrt()
        scale = weight * rstd  # a
        extreme = torch.where(scale >= 0, top, bottom)  # the pair each row's channel takes its max from
        pooled = extreme * scale + (bias - scale * mean)
        ctx.save_for_backward(source, offsets, w_pos, weight, index, mean, rstd, extreme)
        ctx.batch_stats, ctx.chunk = batch_stats, chunk
        ctx.mark_non_differentiable(mean, var)
        return pooled, mean, var

    @staticmethod
    def backward(ctx, g_pooled, _g_mean, _g_var):  # noqa: ANN001, ANN205
        source, offsets, w_pos, weight, index, mean, rstd, extreme = ctx.saved_tensors
        R, K = index.shape
        C = source.shape[1]
        scale = weight * rstd
        g_bias = g_pooled.sum(0)  # Σ over pairs of ∂L/∂y: each row's gradient goes to its winners
        g_weight = (g_pooled * (extreme - mean) * rstd).sum(0)  # Σ ∂L/∂y · ẑ
        # BN backward: ∂L/∂z = a (∂L/∂y − mean(∂L/∂y) − ẑ mean(∂L/∂y ẑ)); without batch statistics ∂L/∂z = a ∂L/∂y
        # per channel: ∂L/∂z = a ∂L/∂y − A z + D, with A = a · slope and D = a · (slope · μ − shift)
        pairs = R * K
        shift = g_bias / pairs if ctx.batch_stats else torch.zeros_like(g_bias)
        slope = g_weight * rstd / pairs if ctx.batch_stats else torch.zeros_like(g_weight)
        neg_a, d = -scale * slope, scale * (slope * mean - shift)
        g_source, g_w_pos = torch.zeros_like(source), torch.zeros_like(w_pos)
        g_offsets = torch.empty_like(offsets) if ctx.needs_input_grad[1] else None
        for s in range(0, R, ctx.chunk):
            rows, flat = slice(s, s + ctx.chunk), index[s : s + ctx.chunk].reshape(-1)
            z = _pair_input(source, offsets[rows], w_pos, index[rows])  # (c, K, C)
            winner = z == extreme[rows].unsqueeze(1)  # ties share the gradient, as amax's backward does
            share = g_pooled[rows] * scale / winner.sum(1)  # a ∂L/∂y at the winners, (c, C)
            g_z = z.mul_(neg_a).add_(d).add_(winner * share.unsqueeze(1))  # in place: z is not needed again
            g_flat = g_z.view(-1, C)
            g_source.scatter_add_(0, flat.unsqueeze(1).expand(-1, C), g_flat)
            g_w_pos.addmm_(g_flat.t(), offsets[rows].reshape(-1, 3))
            if g_offsets is not None:
                torch.matmul(g_z, w_pos, out=g_offsets[rows])
        return g_source, g_offsets, g_w_pos, g_weight, g_bias, None, None, None, None, None


def knn_max_pool(
    source: Tensor, offsets: Tensor, w_pos: Tensor, norm: torch.nn.LayerNorm | torch.nn.BatchNorm1d, index: Tensor,
    chunk: int,
) -> Tensor:
    """``max_k N(source_{j(r,k)} + W_p o_rk)`` per channel, chunked over rows (module docstring), with N a
    LayerNorm of each pair or a BatchNorm of each channel over the R·K pairs.

    Shapes:
        source ``[S, C]``; offsets ``[R, K, 3]``; w_pos ``[C, 3]`` (``W_p``); index ``[R, K]`` long in
        ``[0, S)``; norm: an affine LayerNorm or BatchNorm1d over C. Returns ``[R, C]``.

    A BatchNorm in training mode normalises with the batch's statistics and updates its running statistics,
    as ``nn.BatchNorm1d`` does; in eval mode it uses the running ones. Under autocast every input is cast to
    the widest of their dtypes (float32 at least with a BatchNorm, whose statistics sum over every pair).
    """
    tensors = (source, offsets, w_pos, norm.weight, norm.bias)
    dtype = torch.float32 if isinstance(norm, torch.nn.BatchNorm1d) else tensors[0].dtype
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    cast = [t.to(dtype).contiguous() for t in tensors]
    with torch.autocast(source.device.type, enabled=False):
        if isinstance(norm, torch.nn.LayerNorm):
            return _KNNMaxPool.apply(*cast, index.contiguous(), norm.eps, chunk)
        batch_stats = norm.training or norm.running_mean is None
        running = (None, None) if batch_stats else (norm.running_mean.to(dtype), norm.running_var.to(dtype))
        pooled, mean, var = _KNNMaxPoolBatchNorm.apply(*cast, index.contiguous(), *running, norm.eps, chunk)
        if norm.training and norm.running_mean is not None:  # as nn.BatchNorm1d: unbiased variance, momentum
            with torch.no_grad():
                norm.num_batches_tracked += 1
                momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
                pairs = index.numel()
                norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
                norm.running_var.lerp_((var * pairs / max(pairs - 1, 1)).to(norm.running_var.dtype), momentum)
        return pooled
