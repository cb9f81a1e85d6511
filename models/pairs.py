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

**KNN max-pool, LayerNorm** (:func:`knn_max_pool`), the per-pair part of the KNN initialisation
(docs/operator.md §2): ``y_r = max_k LN(x_{j(r,k)} + W_p o_rk)`` per channel, with the offsets
``o_rk = p_j − p_i``. Forward keeps per-row results only; backward rebuilds the chunk's pairs and routes each
channel's gradient to the neighbours that reach the maximum (shared among ties, as autograd's ``amax`` does).

**KNN max-pool, BatchNorm** (:func:`knn_batchnorm_max_pool`, the default): the pair feature splits into a
per-input and a per-row term, so no pair is built at all; the only per-pair step left is a max over gathered
rows (:func:`neighbour_max`), chunked like the rest. The functions here run on every device; on the CPU the
local attention runs as sparse products instead (``models.csr``, docs/operator.md §7).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

from models.csr import neighbour_sum
from models.ops import widest_dtype

#: Triton ships with the CUDA builds of torch: on CUDA, local attention and the neighbour max run as its fused
#: kernels (``models.triton_pairs``), the chunked functions here elsewhere.
TRITON = importlib.util.find_spec("triton") is not None
#: Elements of one chunk's gathered keys on CPU (R_chunk·K·C): 2^19 floats = 2 MiB, about an L2 cache.
CPU_CHUNK_ELEMENTS = 1 << 19


def use_triton(device: torch.device) -> bool:
    """Whether the Triton kernels of ``models.triton_pairs`` run: on CUDA, where Triton is installed."""
    return TRITON and device.type == "cuda"


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
        g_out = g_out.to(q.dtype).contiguous()  # compiled graphs may hand gradients over in another dtype
        g_q, g_key, g_value = torch.empty_like(q), torch.zeros_like(key), torch.zeros_like(value)
        g_q_rel = g_rel = None
        if rel is not None:
            g_mixed = g_mixed.to(q.dtype).contiguous() if g_mixed is not None else q.new_zeros(R, h, rel.shape[-1])
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
    dtype = widest_dtype(q, key, value, q_rel, rel)
    cast = [None if t is None else t.to(dtype).contiguous() for t in (q, q_rel, key, value, rel)]
    with torch.autocast(q.device.type, enabled=False):
        if use_triton(q.device):
            from models.triton_pairs import triton_local_attention  # imports Triton: on CUDA only

            q, q_rel, key, value, rel = cast
            return triton_local_attention(q, key, value, index.contiguous(), scale, q_rel, rel)
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
        g_pooled = g_pooled.to(pooled.dtype).contiguous()  # compiled graphs may pass another dtype
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


def knn_max_pool(
    source: Tensor, offsets: Tensor, w_pos: Tensor, norm: torch.nn.LayerNorm, index: Tensor, chunk: int
) -> Tensor:
    """``max_k LN(source_{j(r,k)} + W_p o_rk)`` per channel, chunked over rows (module docstring), with LN a
    LayerNorm of each pair.

    Shapes:
        source ``[S, C]``; offsets ``[R, K, 3]``; w_pos ``[C, 3]`` (``W_p``); index ``[R, K]`` long in
        ``[0, S)``; norm: an affine LayerNorm over C. Returns ``[R, C]``.

    Under autocast every input is cast to the widest of their dtypes.
    """
    tensors = (source, offsets, w_pos, norm.weight, norm.bias)
    dtype = widest_dtype(*tensors)
    cast = [t.to(dtype).contiguous() for t in tensors]
    with torch.autocast(source.device.type, enabled=False):
        return _KNNMaxPool.apply(*cast, index.contiguous(), norm.eps, chunk)


class _NeighbourMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, index, chunk: int):  # noqa: ANN001, ANN205
        (R, K), C = index.shape, values.shape[1]
        top = values.new_empty(R, C)
        keep = ctx.needs_input_grad[0]  # which neighbour wins each channel, for backward only
        winner = values.new_empty(R, C) if keep else None
        rank = torch.arange(1, K + 1, dtype=values.dtype, device=values.device).view(1, K, 1)
        for s in range(0, R, chunk):
            rows = slice(s, s + chunk)
            z = values.index_select(0, index[rows].reshape(-1)).view(-1, K, C)  # (c, K, C)
            torch.amax(z, dim=1, out=top[rows])
            if keep:  # 1 + the last k reaching the max; in place on the chunk (measured 4× faster than argmax)
                torch.amax(z.sub_(top[rows].unsqueeze(1)).eq_(0).mul_(rank), dim=1, out=winner[rows])
        if keep:
            small = torch.int16 if K < 2**15 else torch.int32
            ctx.save_for_backward(index, winner.sub_(1).to(small))
        ctx.sources, ctx.dtype = values.shape[0], values.dtype
        return top

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        index, winner = ctx.saved_tensors
        R, C = winner.shape
        j = index.gather(1, winner.long())  # the winning input of each row and channel, (R, C)
        flat = (j * C + torch.arange(C, device=j.device)).view(-1)
        grad = grad.to(ctx.dtype).contiguous()  # compiled graphs may pass another dtype
        g_values = grad.new_zeros(ctx.sources * C).index_add_(0, flat, grad.view(-1))
        return g_values.view(ctx.sources, C), None, None


def neighbour_max(values: Tensor, index: Tensor, chunk: int) -> Tensor:
    """``max_k values[index[r, k]]`` per row and channel, chunked over rows: values ``[S, C]``, index ``[R, K]``
    long → ``[R, C]``. Backward routes each row's channel gradient to one winner (the last k among ties; a
    subgradient), remembered in forward as a small integer per row and channel, so backward is one scatter.
    On CUDA two Triton kernels do the same (``models.triton_pairs``)."""
    if use_triton(values.device):
        from models.triton_pairs import triton_neighbour_max  # imports Triton: on CUDA only

        return triton_neighbour_max(values.contiguous(), index.contiguous())
    return _NeighbourMax.apply(values.contiguous(), index.contiguous(), chunk)


def knn_batchnorm_max_pool(
    source: Tensor, points: Tensor, centres: Tensor, w_pos: Tensor, norm: torch.nn.BatchNorm1d, index: Tensor,
    chunk: int,
) -> Tensor:
    """``max_k BN(source_j + W_p (p_j − p_r))`` per channel, j = index[r, k], with BN a BatchNorm of each channel
    over all R·K pairs: the pairs are never built.

    The pair feature splits as z_rk = b_j − c_r with b = source + W_p p (per input) and c = W_p p_r (per row),
    and BN is an affine map per channel with gain a = γ/σ, so the max over k is taken at max_k b_j where a ≥ 0
    and at min_k b_j = −max_k(−b_j) where a < 0 (:func:`neighbour_max`). The batch statistics are sums over
    pairs of b_j, b_j² and c_r·b_j: counts per input and one neighbour sum (docs/operator.md §7).

    Shapes: source ``[S, C]``; points ``[S, 3]`` (p_j); centres ``[R, 3]`` (p_r); w_pos ``[C, 3]``; index
    ``[R, K]`` long in ``[0, S)`` → ``[R, C]``. Training mode uses the batch's statistics and updates the
    running ones as ``nn.BatchNorm1d`` does; eval mode uses the running ones. Computed in float32 at least.
    """
    dtype = widest_dtype(torch.float32, source, points, centres, w_pos, norm.weight)
    (R, K), S = index.shape, source.shape[0]
    with torch.autocast(source.device.type, enabled=False):
        w_pos, weight, bias = w_pos.to(dtype), norm.weight.to(dtype), norm.bias.to(dtype)
        b = torch.addmm(source.to(dtype), points.to(dtype), w_pos.t())  # (S, C)
        c = centres.to(dtype) @ w_pos.t()  # (R, C)
        sign = torch.where(weight.detach() >= 0, 1.0, -1.0).to(dtype)  # of the gain a (σ > 0)
        extreme = neighbour_max(b * sign, index, chunk) * sign - c  # z at each row's extreme pair, (R, C)
        if norm.training or norm.running_mean is None:
            pairs = R * K
            count = b.new_zeros(S).index_add_(0, index.reshape(-1), b.new_ones(pairs))  # pairs per input
            mean = (count @ b - K * c.sum(0)) / pairs
            centred = b - mean  # the sums below then add no large terms that cancel
            cross = (c * neighbour_sum(centred, index)).sum(0)  # Σ_pairs c_r (b_j − μ)
            var = ((count @ centred.square() - 2 * cross + K * c.square().sum(0)) / pairs).clamp_min(0)
            if norm.training and norm.running_mean is not None:  # as nn.BatchNorm1d: unbiased, momentum
                with torch.no_grad():
                    norm.num_batches_tracked += 1
                    momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
                    norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
                    unbiased = var * pairs / max(pairs - 1, 1)
                    norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)
        else:
            mean, var = norm.running_mean.to(dtype), norm.running_var.to(dtype)
        return (extreme - mean) * (weight * (var + norm.eps).rsqrt()) + bias
