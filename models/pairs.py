"""Per-pair work (M centroids × K neighbours) as chunked autograd functions: no per-pair tensor is kept.

Written with autograd, every per-pair step (gathering the neighbours' features, adding a position term,
normalising, multiplying by a query) writes a ``[R, K, C]`` tensor, one pass over memory much larger than
the cache, and keeps several of them for the backward pass. The functions here process the rows (R = B·M
centroids) in chunks whose per-pair tensors fit in the cache, keep only per-row results for backward, and
in backward gather each chunk again and add the feature gradients straight into the ``[S, C]`` sources
(docs/operator.md §7). Exact: the same sums in another order, tested in float64 against the autograd
formulas and with ``gradcheck``.

Local attention and the neighbour max are custom operators (``torch.library.custom_op``, namespace
``centroid``), forward and backward each one operator that runs the chunked loop here or the Triton kernels
of ``models.triton_pairs``: ``torch.compile`` keeps each whole instead of unrolling the loop or tracing the
kernel launches.

**Local attention** (:func:`local_attention`). Each row attends to K inputs given by a flat index into the
shared keys and values. Per head, with the position code's hidden layer ``r_rk`` (width e) and
``q̃_r = W_2ᵀ q_r`` (docs/operator.md §2, §7):

    l_rk = q_r · k_{j(r,k)} + q̃_r · r_rk,   a_rk = softmax_k(s · l_rk)
    out_r = Σ_k a_rk v_{j(r,k)},            mixed_r = Σ_k a_rk r_rk

Forward keeps the weights ``a`` ``[R, K, h]`` (1/d of a per-pair tensor).

**KNN max-pool, LayerNorm** (:func:`knn_max_pool`), the per-pair part of the KNN initialisation
(docs/operator.md §2): ``y_r = max_k LN(x_{j(r,k)} + W_p o_rk)`` per channel, with the offsets
``o_rk = p_j − p_i``. Forward keeps its inputs only; backward rebuilds the chunk's pairs, takes their max
again and routes each channel's gradient to the neighbours that reach it (shared among ties, as autograd's
``amax`` does).

**KNN max-pool, BatchNorm** (:func:`knn_batchnorm_max_pool`, the default): the pair feature splits into a
per-input and a per-row term, so no pair is built at all; the only per-pair step left is a max over gathered
rows (:func:`neighbour_max`), chunked like the rest. The functions here run on every device; on the CPU the
local attention runs as sparse products instead (``models.csr``, docs/operator.md §7).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from models.ops import TRITON, widest_dtype

#: Elements of one chunk's gathered keys on CPU (R_chunk·K·C): 2^19 floats = 2 MiB, about an L2 cache.
CPU_CHUNK_ELEMENTS = 1 << 19


def use_triton(device: torch.device) -> bool:
    """Whether the Triton kernels of ``models.triton_pairs`` run: on CUDA, where Triton is installed, unless
    deterministic algorithms are asked for (``torch.use_deterministic_algorithms``, Lightning's ``deterministic:
    true``). Their backward adds gradients with atomic adds, in no fixed order; the chunked functions' scatter
    adds then run torch's deterministic kernels."""
    return TRITON and device.type == "cuda" and not torch.are_deterministic_algorithms_enabled()


@functools.cache
def _warn_atomic_adds(op: str) -> None:
    """Once per operator: its Triton backward was asked for (``triton=True``) under deterministic algorithms."""
    warnings.warn(f"centroid::{op}: the Triton backward adds gradients with atomic adds, in no fixed order, although "
                  "deterministic algorithms are enabled; leave triton to its default for the deterministic chunked "
                  "path", stacklevel=2)  # fmt: skip


def _check_determinism(op: str, triton: bool) -> None:
    if triton and torch.are_deterministic_algorithms_enabled():
        _warn_atomic_adds(op)


def chunk_rows(rows: int, per_row: int, device: torch.device, max_rows: int | None) -> int:
    """Rows per chunk: cache-sized on CPU; on an accelerator as many as ``max_rows`` allows (fewer launches)."""
    limit = rows if max_rows is None else max_rows
    if device.type == "cpu":
        limit = min(limit, max(16, CPU_CHUNK_ELEMENTS // max(per_row, 1)))
    return max(1, min(rows, limit))


def _chunked_attention(q, q_rel, key, value, rel, index, scale: float, chunk: int):  # noqa: ANN001, ANN202
    """The forward of :func:`local_attention`, chunked over rows: ``out``, ``mixed`` (``None`` without rel), weights."""
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


def _chunked_attention_backward(  # noqa: ANN202
    g_out, g_mixed, q, q_rel, key, value, rel, index, weights, scale: float, chunk: int,  # noqa: ANN001
):
    """The backward of :func:`local_attention`, chunked over rows: the gradients of q, q_rel, key, value, rel."""
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


def _none_if_empty(t: Tensor) -> Tensor | None:
    return None if t.numel() == 0 and t.dim() == 1 else t


def _empty_if_none(t: Tensor | None, like: Tensor) -> Tensor:
    """Custom operators return tensors only: an absent result travels as an empty 1-d tensor."""
    return like.new_empty(0) if t is None else t


@torch.library.custom_op("centroid::local_attention", mutates_args=())
def _attention_op(
    q: Tensor, q_rel: Tensor | None, key: Tensor, value: Tensor, rel: Tensor | None, index: Tensor, scale: float,
    chunk: int, triton: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    if triton:
        from models.triton_pairs import triton_attention  # imports Triton: on CUDA only

        out, mixed, weights = triton_attention(q, q_rel, key, value, rel, index, scale)
    else:
        out, mixed, weights = _chunked_attention(q, q_rel, key, value, rel, index, scale, chunk)
    return out, _empty_if_none(mixed, q), weights


@_attention_op.register_fake
def _(q, q_rel, key, value, rel, index, scale, chunk, triton):  # noqa: ANN001, ANN202
    (R, h, d), K = q.shape, index.shape[1]
    mixed = q.new_empty(0) if rel is None else q.new_empty(R, h, rel.shape[-1])
    return q.new_empty(R, h, d), mixed, q.new_empty(R, K, h)


@torch.library.custom_op("centroid::local_attention_backward", mutates_args=())
def _attention_backward_op(
    g_out: Tensor, g_mixed: Tensor | None, q: Tensor, q_rel: Tensor | None, key: Tensor, value: Tensor,
    rel: Tensor | None, index: Tensor, weights: Tensor, scale: float, chunk: int, triton: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    g_out = g_out.to(q.dtype).contiguous()  # compiled graphs may hand gradients over in another dtype
    if rel is not None:
        g_mixed = q.new_zeros(*q.shape[:2], rel.shape[-1]) if g_mixed is None else g_mixed.to(q.dtype).contiguous()
    saved = (g_out, g_mixed, q, q_rel, key, value, rel, index, weights, scale)
    _check_determinism("local_attention_backward", triton)
    if triton:
        from models.triton_pairs import triton_attention_backward  # imports Triton: on CUDA only

        g_q, g_q_rel, g_key, g_value, g_rel = triton_attention_backward(*saved)
    else:
        g_q, g_q_rel, g_key, g_value, g_rel = _chunked_attention_backward(*saved, chunk)
    return g_q, _empty_if_none(g_q_rel, q), g_key, g_value, _empty_if_none(g_rel, q)


@_attention_backward_op.register_fake
def _(g_out, g_mixed, q, q_rel, key, value, rel, index, weights, scale, chunk, triton):  # noqa: ANN001, ANN202
    position = (q.new_empty(0), q.new_empty(0)) if rel is None else (torch.empty_like(q_rel), torch.empty_like(rel))
    return torch.empty_like(q), position[0], torch.empty_like(key), torch.empty_like(value), position[1]


def _attention_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    q, q_rel, key, value, rel, index, scale, chunk, triton = inputs
    ctx.save_for_backward(q, q_rel, key, value, rel, index, output[2])
    ctx.scale, ctx.chunk, ctx.triton = scale, chunk, triton
    ctx.mark_non_differentiable(output[2])


def _attention_grad(ctx, g_out, g_mixed, _g_weights):  # noqa: ANN001, ANN202
    q, q_rel, key, value, rel, index, weights = ctx.saved_tensors
    g_mixed = None if rel is None else g_mixed
    g_q, g_q_rel, g_key, g_value, g_rel = _attention_backward_op(
        g_out, g_mixed, q, q_rel, key, value, rel, index, weights, ctx.scale, ctx.chunk, ctx.triton
    )  # fmt: skip
    return g_q, _none_if_empty(g_q_rel), g_key, g_value, _none_if_empty(g_rel), None, None, None, None


_attention_op.register_autograd(_attention_grad, setup_context=_attention_setup)


def local_attention(
    q: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor,
    scale: float,
    chunk: int,
    q_rel: Tensor | None = None,
    rel: Tensor | None = None,
    *,
    triton: bool | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Softmax attention of each row's query on its K indexed keys, chunked over rows (module docstring).

    Shapes:
        q ``[R, h, d]``; key, value ``[S, h, d]`` (shared, indexed by ``index [R, K]`` long in ``[0, S)``);
        q_rel ``[R, e, h]`` and rel ``[R, K, e]``: the position-code terms, both or neither.
        returns ``out [R, h, d]``, ``mixed [R, h, e]`` (``None`` without rel) and the weights ``[R, K, h]``
        (not differentiable).

    ``triton``: run the Triton kernels of ``models.triton_pairs`` instead of the chunked function (default:
    :func:`use_triton`). Either runs as one custom operator, forward and backward, which ``torch.compile`` keeps
    whole rather than tracing into its loops or kernel launches. Under autocast every input is cast to the
    widest of their dtypes; the softmax runs in float32 at least.
    """
    if (q_rel is None) != (rel is None):
        raise ValueError("q_rel and rel are the position-code terms: give both or neither")
    dtype = widest_dtype(q, key, value, q_rel, rel)
    q, q_rel, key, value, rel = (None if t is None else t.to(dtype).contiguous() for t in (q, q_rel, key, value, rel))
    triton = use_triton(q.device) if triton is None else triton
    with torch.autocast(q.device.type, enabled=False):
        out, mixed, weights = _attention_op(q, q_rel, key, value, rel, index.contiguous(), scale, chunk, triton)
    return out, _none_if_empty(mixed), weights


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
        ctx.save_for_backward(source, offsets, w_pos, weight, bias, index)
        ctx.eps, ctx.chunk = eps, chunk
        return pooled

    @staticmethod
    def backward(ctx, g_pooled):  # noqa: ANN001, ANN205
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


def _chunked_neighbour_max(values: Tensor, index: Tensor, chunk: int, keep: bool) -> tuple[Tensor, Tensor | None]:
    """The forward of :func:`neighbour_max`, chunked over rows: the maxima and (``keep``) the winning k."""
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


def winner_dtype(k: int) -> torch.dtype:
    """The winning k of each row and channel is kept as a small integer."""
    return torch.int16 if k < 2**15 else torch.int32


@torch.library.custom_op("centroid::neighbour_max", mutates_args=())
def _neighbour_max_op(values: Tensor, index: Tensor, chunk: int, keep: bool, triton: bool) -> tuple[Tensor, Tensor]:
    if triton:
        from models.triton_pairs import triton_neighbour_max  # imports Triton: on CUDA only

        top, winner = triton_neighbour_max(values, index, keep)
    else:
        top, winner = _chunked_neighbour_max(values, index, chunk, keep)
    return top, _empty_if_none(winner, index)


@_neighbour_max_op.register_fake
def _(values, index, chunk, keep, triton):  # noqa: ANN001, ANN202
    (R, K), C = index.shape, values.shape[1]
    winner = index.new_empty(R, C, dtype=winner_dtype(K)) if keep else index.new_empty(0)
    return values.new_empty(R, C), winner


@torch.library.custom_op("centroid::neighbour_max_backward", mutates_args=())
def _neighbour_max_backward_op(grad: Tensor, index: Tensor, winner: Tensor, sources: int, triton: bool) -> Tensor:
    _check_determinism("neighbour_max_backward", triton)
    if triton:
        from models.triton_pairs import triton_neighbour_max_backward  # imports Triton: on CUDA only

        return triton_neighbour_max_backward(grad.contiguous(), index, winner, sources)
    C = winner.shape[1]
    j = index.gather(1, winner.long())  # the winning input of each row and channel, (R, C)
    flat = (j * C + torch.arange(C, device=j.device)).view(-1)
    return grad.new_zeros(sources * C).index_add_(0, flat, grad.contiguous().view(-1)).view(sources, C)


@_neighbour_max_backward_op.register_fake
def _(grad, index, winner, sources, triton):  # noqa: ANN001, ANN202
    return grad.new_empty(sources, winner.shape[1])


def _neighbour_max_setup(ctx, inputs, output) -> None:  # noqa: ANN001
    values, index, _chunk, _keep, triton = inputs
    ctx.save_for_backward(index, output[1])
    ctx.sources, ctx.dtype, ctx.triton = values.shape[0], values.dtype, triton
    ctx.mark_non_differentiable(output[1])


def _neighbour_max_grad(ctx, grad, _g_winner):  # noqa: ANN001, ANN202
    index, winner = ctx.saved_tensors
    grad = grad.to(ctx.dtype)  # compiled graphs may pass another dtype
    return _neighbour_max_backward_op(grad, index, winner, ctx.sources, ctx.triton), None, None, None, None


_neighbour_max_op.register_autograd(_neighbour_max_grad, setup_context=_neighbour_max_setup)


def neighbour_max(values: Tensor, index: Tensor, chunk: int, *, triton: bool | None = None) -> Tensor:
    """``max_k values[index[r, k]]`` per row and channel, chunked over rows: values ``[S, C]``, index ``[R, K]``
    long → ``[R, C]``. Backward routes each row's channel gradient to one winner (the last k among ties; a
    subgradient), remembered in forward as a small integer per row and channel, so backward is one scatter. A NaN
    among the neighbours gives NaN, as ``torch.amax``, with its gradient at k = 0.
    ``triton``: run the Triton kernels of ``models.triton_pairs`` (default: :func:`use_triton`); either way one
    custom operator, forward and backward, as :func:`local_attention`."""
    triton = use_triton(values.device) if triton is None else triton
    keep = values.requires_grad and torch.is_grad_enabled()  # the winners are kept for backward only
    return _neighbour_max_op(values.contiguous(), index.contiguous(), chunk, keep, triton)[0]


def knn_batchnorm_max_pool(
    source: Tensor, points: Tensor, centres: Tensor, w_pos: Tensor, norm: _BatchNorm, index: Tensor, chunk: int
) -> Tensor:
    """``max_k BN(source_j + W_p (p_j − p_r))`` per channel, j = index[r, k], with BN a BatchNorm of each channel
    over all R·K pairs: the pairs are never built.

    The pair feature splits as z_rk = b_j − c_r with b = source + W_p p (per input) and c = W_p p_r (per row),
    and BN is an affine map per channel with gain a = γ/σ, so the max over k is taken at max_k b_j where a ≥ 0
    and at min_k b_j = −max_k(−b_j) where a < 0 (:func:`neighbour_max`). The batch statistics are sums over
    pairs of b_j, b_j² and c_r·b_j: per input, the number of its pairs and the sum of their rows' positions
    (c_r is linear in p_r), so nothing wider than 4 values is summed over the pairs (docs/operator.md §7).
    z depends on the offsets p_j − p_r only, so the positions are first taken relative to the mean centre:
    b and c then stay as small as the cloud, wherever it lies, and their sums do not cancel.

    ``norm`` is any BatchNorm (``nn.BatchNorm1d``, or the ``nn.SyncBatchNorm`` that Lightning's
    ``sync_batchnorm`` puts in its place); a ``SyncBatchNorm`` in training in a distributed run takes its
    statistics over the pairs of every process of its group (sums all-reduced: exact, and differentiable).

    Shapes: source ``[S, C]``; points ``[S, 3]`` (p_j); centres ``[R, 3]`` (p_r); w_pos ``[C, 3]``; index
    ``[R, K]`` long in ``[0, S)`` → ``[R, C]``, in the widest input dtype. Training mode uses the batch's
    statistics and updates the running ones as ``nn.BatchNorm1d`` does; eval mode uses the running ones.
    Computed in float32 at least.
    """
    result = widest_dtype(source, points, centres, w_pos, norm.weight)
    dtype = widest_dtype(torch.float32, result)
    with torch.autocast(source.device.type, enabled=False):
        w_pos, weight, bias = w_pos.to(dtype), norm.weight.to(dtype), norm.bias.to(dtype)
        origin = centres.detach().to(dtype).mean(0)  # exact: z depends on offsets only
        points, centres = points.to(dtype) - origin, centres.to(dtype) - origin
        b = torch.addmm(source.to(dtype), points, w_pos.t())  # (S, C)
        c = centres @ w_pos.t()  # (R, C)
        sign = torch.where(weight.detach() >= 0, 1.0, -1.0).to(dtype)  # of the gain a (σ > 0)
        extreme = neighbour_max(b * sign, index, chunk) * sign - c  # z at each row's extreme pair, (R, C)
        if norm.training or norm.running_mean is None:
            mean, var, pairs = _pair_statistics(b, c, centres, w_pos, index, _sync_group(norm))
            if norm.training and norm.running_mean is not None:
                _update_running_statistics(norm, mean, var, pairs)
        else:
            mean, var = norm.running_mean.to(dtype), norm.running_var.to(dtype)
        return ((extreme - mean) * (weight * (var + norm.eps).rsqrt()) + bias).to(result)


def _sync_group(norm: _BatchNorm) -> dist.ProcessGroup | None:
    """The process group whose pairs a training ``SyncBatchNorm`` takes its statistics over (``None``: this
    process's pairs only), as ``nn.SyncBatchNorm.forward`` decides."""
    distributed = dist.is_available() and dist.is_initialized()
    if not (isinstance(norm, torch.nn.SyncBatchNorm) and norm.training and distributed):
        return None
    group = norm.process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _pair_statistics(
    b: Tensor, c: Tensor, centres: Tensor, w_pos: Tensor, index: Tensor, group: dist.ProcessGroup | None
) -> tuple[Tensor, Tensor, int]:
    """Mean and biased variance ``[C]`` of z_rk = b_j − c_r over the R·K pairs (of every process in ``group``),
    and the number of pairs. Two passes: the sum of z, then the sum of (z − μ)² about the shared mean μ."""
    (R, K), S = index.shape, b.shape[0]
    # per input j: the number of pairs it is in, n_j, and the sum of their rows' positions, P_j
    rows = torch.cat([centres, b.new_ones(R, 1)], dim=1)  # (R, 4): p_r, 1
    counts = b.new_zeros(S, 4).index_add_(0, index.reshape(-1), rows.repeat_interleave(K, dim=0))
    count = counts[:, 3]
    total, pairs = count @ b - K * c.sum(0), R * K
    if group is not None:  # the pair count travels in float64: exact beyond float32's 2^24
        both = _all_reduce(torch.cat([total.double(), total.new_tensor([pairs], dtype=torch.float64)]), group)
        total, pairs = both[:-1].to(b.dtype), int(both[-1])
    mean = total / pairs
    centred = b - mean
    # Σ_pairs c_r (b_j − μ) = Σ_j (W_p P_j)·(b_j − μ): c_r = W_p p_r is linear in the 3 coordinates
    cross = (w_pos * (counts[:, :3].t() @ centred).t()).sum(1)
    square = count @ centred.square() - 2 * cross + K * c.square().sum(0)  # Σ_pairs (z − μ)²
    if group is not None:
        square = _all_reduce(square, group)
    return mean, (square / pairs).clamp_min(0), pairs


def _all_reduce(t: Tensor, group: dist.ProcessGroup) -> Tensor:
    """The sum of ``t`` over the processes of ``group``; backward sums the gradients likewise."""
    from torch.distributed.nn.functional import all_reduce  # autograd's collectives, loaded in distributed runs

    return all_reduce(t, group=group)


def _update_running_statistics(norm: _BatchNorm, mean: Tensor, var: Tensor, pairs: int) -> None:
    """As ``nn.BatchNorm1d`` in training: the unbiased variance, the momentum (or a cumulative average)."""
    with torch.no_grad():
        norm.num_batches_tracked += 1
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
        unbiased = var * pairs / max(pairs - 1, 1)
        norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)
