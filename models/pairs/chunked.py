"""The ``"chunked"`` kernel: per-pair work in row chunks, with hand-written backward passes (docs/operator.md §7).

Written with autograd, every per-pair step (gathering the neighbours' features, adding a position term,
normalising, multiplying by a query) writes a ``[R, K, C]`` tensor, one pass over memory much larger than
the cache, and keeps several of them for the backward pass. The functions here process the rows (R = B·M
centroids) in chunks whose per-pair tensors fit in the cache, keep only per-row results for backward, and
in backward gather each chunk again and add the feature gradients straight into the ``[S, C]`` sources.
Exact: the same sums in another order, tested in float64 against the formulas and with ``gradcheck``.

**Local attention** (forward :func:`chunked_attention`, backward :func:`chunked_attention_backward`). Each row
attends to K inputs given by a flat index into the shared keys and values. Per head, with the position code's
hidden layer ``r_rk`` (width e) and ``q̃_r = W_2ᵀ q_r`` (docs/operator.md §2, §7):

    l_rk = q_r · k_{j(r,k)} + q̃_r · r_rk,   a_rk = softmax_k(s · l_rk)
    out_r = Σ_k a_rk v_{j(r,k)},            mixed_r = Σ_k a_rk r_rk

Forward keeps the weights ``a`` ``[R, K, h]`` (1/d of a per-pair tensor). ``models.pairs.operators`` wraps
these functions and the Triton kernels in custom operators.

**Neighbour max** (:func:`chunked_neighbour_max`): ``max_k values[index[r, k]]``, keeping the winning k of
each row and channel for a one-scatter backward.

**KNN max-pool, LayerNorm** (:func:`chunked_knn_max_pool`), the per-pair part of the KNN initialisation
(docs/operator.md §2): ``y_r = max_k LN(x_{j(r,k)} + W_p o_rk)`` per channel, with the offsets
``o_rk = p_j − p_i``. Forward keeps its inputs only; backward rebuilds the chunk's pairs, takes their max
again and routes each channel's gradient to the neighbours that reach it (shared among ties, as autograd's
``amax`` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from models.ops import widest_dtype
from models.pairs.layout import winner_dtype


def chunked_attention(q, q_rel, key, value, rel, index, scale: float, chunk: int):
    """Local attention's forward, chunked over rows: ``out``, ``mixed`` (``None`` without rel) and the weights."""
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
    return out, mixed, weights


def chunked_attention_backward(
    g_out, g_mixed, q, q_rel, key, value, rel, index, weights, scale: float, chunk: int,
):
    """The backward of :func:`chunked_attention`: the gradients of q, q_rel, key, value, rel."""
    R, h, d = q.shape
    K, C = index.shape[1], h * d
    g_q, g_key, g_value = torch.empty_like(q), torch.zeros_like(key), torch.zeros_like(value)
    g_q_rel = g_rel = None
    if rel is not None:
        g_q_rel, g_rel = torch.empty_like(q_rel), torch.empty_like(rel)
    for s in range(0, R, chunk):
        rows, flat = slice(s, s + chunk), index[s : s + chunk].reshape(-1)
        a, go = weights[rows], g_out[rows]
        g_a = (value.index_select(0, flat).view(-1, K, h, d) * go.unsqueeze(1)).sum(-1)  # (c, K, h)
        wide = flat.unsqueeze(1).expand(-1, C)  # scatter index over the C = h·d channels
        g_value.view(-1, C).scatter_add_(0, wide, (a.unsqueeze(-1) * go.unsqueeze(1)).view(-1, C))
        if rel is not None:
            gm = g_mixed[rows]
            g_a.baddbmm_(rel[rows], gm.transpose(1, 2))  # + r · g_mixed
            torch.bmm(a, gm, out=g_rel[rows])
        g_logits = a * (g_a - (a * g_a).sum(1, keepdim=True)) * scale  # softmax backward, (c, K, h)
        g_q[rows] = (key.index_select(0, flat).view(-1, K, h, d) * g_logits.unsqueeze(-1)).sum(1)
        g_key.view(-1, C).scatter_add_(0, wide, (g_logits.unsqueeze(-1) * q[rows].unsqueeze(1)).view(-1, C))
        if rel is not None:
            torch.bmm(rel[rows].transpose(1, 2), g_logits, out=g_q_rel[rows])
            g_rel[rows].baddbmm_(g_logits, q_rel[rows].transpose(1, 2))
    return g_q, g_q_rel, g_key, g_value, g_rel


class _KNNMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, source, offsets, w_pos, weight, bias, index, eps: float, chunk: int):
        R, K = index.shape
        C = source.shape[1]
        pooled = source.new_empty(R, C)
        for s in range(0, R, chunk):
            rows = slice(s, s + chunk)
            z = _pair_input(source, offsets[rows], w_pos, index[rows])  # (c, K, C)
            torch.amax(F.layer_norm(z, (C,), weight, bias, eps), dim=1, out=pooled[rows])
        ctx.save_for_backward(source, offsets, w_pos, weight, bias, index)
        ctx.eps, ctx.chunk = eps, chunk
        return pooled

    @staticmethod
    def backward(ctx, g_pooled):
        source, offsets, w_pos, weight, bias, index = ctx.saved_tensors
        R, K = index.shape
        C = source.shape[1]
        g_pooled = g_pooled.to(source.dtype).contiguous()  # compiled graphs may pass another dtype
        g_source, g_w_pos = torch.zeros_like(source), torch.zeros_like(w_pos)
        g_weight, g_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        g_offsets = torch.empty_like(offsets) if ctx.needs_input_grad[1] else None
        for s in range(0, R, ctx.chunk):
            rows, flat = slice(s, s + ctx.chunk), index[s : s + ctx.chunk].reshape(-1)
            z = _pair_input(source, offsets[rows], w_pos, index[rows])  # (c, K, C)
            y, mean, rstd = torch.native_layer_norm(z, (C,), weight, bias, ctx.eps)
            # (c, K, C); ties share the gradient, as amax's backward does. Compared with the recomputed max, not the
            # forward's: they can differ by an ulp, and no pair would then win (0 / 0 = NaN before).
            winner = y == y.amax(1, keepdim=True)
            share = g_pooled[rows] / winner.sum(1).clamp_min(1)  # (c, C); no winner only in a NaN row
            g_y = winner * share.unsqueeze(1)  # (a boolean product measured faster than torch.where)
            g_z, g_w, g_b = torch.ops.aten.native_layer_norm_backward(
                g_y, z, (C,), mean, rstd, weight, bias, [True, True, True]
            )
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


def chunked_knn_max_pool(
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


def chunked_neighbour_max(values: Tensor, index: Tensor, chunk: int, keep: bool) -> tuple[Tensor, Tensor | None]:
    """``max_k values[index[r, k]]`` per row and channel, chunked over rows: values ``[S, C]``, index ``[R, K]`` long
    → the maxima ``[R, C]`` and (``keep``) the winning k of each row and channel (the last among ties)."""
    (R, K), C = index.shape, values.shape[1]
    top = values.new_empty(R, C)
    winner = values.new_empty(R, C) if keep else None
    rank = torch.arange(1, K + 1, dtype=values.dtype, device=values.device).view(1, K, 1)
    for s in range(0, R, chunk):
        rows = slice(s, s + chunk)
        z = values.index_select(0, index[rows].reshape(-1)).view(-1, K, C)  # (c, K, C)
        torch.amax(z, dim=1, out=top[rows])
        if keep:  # 1 + the last k reaching the max; in place on the chunk (measured 4× faster than argmax)
            torch.amax(z.eq_(top[rows].unsqueeze(1)).mul_(rank), dim=1, out=winner[rows])
    # a NaN maximum equals no neighbour: its gradient goes to k = 0 (z − max compared with 0 before: −1 for NaN
    # and for rows of ±inf, an index out of range in backward)
    return top, None if winner is None else winner.clamp_min_(1).sub_(1).to(winner_dtype(K))


def chunked_neighbour_max_backward(grad: Tensor, index: Tensor, winner: Tensor, sources: int) -> Tensor:
    """The backward of :func:`chunked_neighbour_max`: each row's channel gradient ``grad [R, C]`` added to its
    winner, one scatter into ``[sources, C]``."""
    C = winner.shape[1]
    j = index.gather(1, winner.long())  # the winning input of each row and channel, (R, C)
    flat = (j * C + torch.arange(C, device=j.device)).view(-1)
    return grad.new_zeros(sources * C).index_add_(0, flat, grad.contiguous().view(-1)).view(sources, C)
