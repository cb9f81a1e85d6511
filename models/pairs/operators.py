"""The ``"chunked"`` and ``"triton"`` kernels as custom operators (``torch.library.custom_op``, namespace
``centroid``): forward and backward each one operator that runs the chunked loop of ``models.pairs.chunked`` or
the Triton kernels of ``models.pairs.triton``, so ``torch.compile`` keeps each whole instead of unrolling the
loop or tracing the kernel launches (docs/operator.md §7).
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor

from models.ops import widest_dtype
from models.pairs.chunked import (
    chunked_attention,
    chunked_attention_backward,
    chunked_neighbour_max,
    chunked_neighbour_max_backward,
)
from models.pairs.layout import winner_dtype


@functools.cache
def _warn_atomic_adds(op: str) -> None:
    """Once per operator: its Triton backward was asked for (``kernel="triton"``) under deterministic algorithms."""
    warnings.warn(f"centroid::{op}: the Triton backward adds gradients with atomic adds, in no fixed order, although "
                  "deterministic algorithms are enabled; leave the kernel to 'auto' for the deterministic chunked "
                  "path", stacklevel=2)


def _check_determinism(op: str, triton: bool) -> None:
    if triton and torch.are_deterministic_algorithms_enabled():
        _warn_atomic_adds(op)


def _none_if_empty(t: Tensor) -> Tensor | None:
    return None if t.numel() == 0 and t.dim() == 1 else t


def _empty_if_none(t: Tensor | None, like: Tensor) -> Tensor:
    """Custom operators return tensors only: an absent result travels as an empty 1-d tensor."""
    return like.new_empty(0) if t is None else t


@torch.library.custom_op("centroid::local_attention", mutates_args=())
def _attention_op(
    q: Tensor, q_rel: Tensor | None, key: Tensor, value: Tensor, rel: Tensor | None, index: Tensor, scale: float,
    chunk: int, triton: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    if triton:
        from models.pairs.triton import triton_attention  # imports Triton: where it is asked for only

        out, mixed, weights = triton_attention(q, q_rel, key, value, rel, index, scale)
    else:
        out, mixed, weights = chunked_attention(q, q_rel, key, value, rel, index, scale, chunk)
    return out, _empty_if_none(mixed, q), weights


@_attention_op.register_fake
def _(q, q_rel, key, value, rel, index, scale, chunk, triton):
    (R, h, d), K = q.shape, index.shape[1]
    mixed = q.new_empty(0) if rel is None else q.new_empty(R, h, rel.shape[-1])
    return q.new_empty(R, h, d), mixed, q.new_empty(R, K, h)


@torch.library.custom_op("centroid::local_attention_backward", mutates_args=())
def _attention_backward_op(
    g_out: Tensor, g_mixed: Tensor | None, q: Tensor, q_rel: Tensor | None, key: Tensor, value: Tensor,
    rel: Tensor | None, index: Tensor, weights: Tensor, scale: float, chunk: int, triton: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    g_out = g_out.to(q.dtype).contiguous()  # compiled graphs may hand gradients over in another dtype
    if rel is not None:
        g_mixed = q.new_zeros(*q.shape[:2], rel.shape[-1]) if g_mixed is None else g_mixed.to(q.dtype).contiguous()
    saved = (g_out, g_mixed, q, q_rel, key, value, rel, index, weights, scale)
    _check_determinism("local_attention_backward", triton)
    if triton:
        from models.pairs.triton import triton_attention_backward  # imports Triton: where it is asked for only

        g_q, g_q_rel, g_key, g_value, g_rel = triton_attention_backward(*saved)
    else:
        g_q, g_q_rel, g_key, g_value, g_rel = chunked_attention_backward(*saved, chunk)
    return g_q, _empty_if_none(g_q_rel, q), g_key, g_value, _empty_if_none(g_rel, q)


@_attention_backward_op.register_fake
def _(g_out, g_mixed, q, q_rel, key, value, rel, index, weights, scale, chunk, triton):
    position = (q.new_empty(0), q.new_empty(0)) if rel is None else (torch.empty_like(q_rel), torch.empty_like(rel))
    return torch.empty_like(q), position[0], torch.empty_like(key), torch.empty_like(value), position[1]


def _attention_setup(ctx, inputs, output) -> None:
    q, q_rel, key, value, rel, index, scale, chunk, triton = inputs
    ctx.save_for_backward(q, q_rel, key, value, rel, index, output[2])
    ctx.scale, ctx.chunk, ctx.triton = scale, chunk, triton
    ctx.mark_non_differentiable(output[2])


def _attention_grad(ctx, g_out, g_mixed, _g_weights):
    q, q_rel, key, value, rel, index, weights = ctx.saved_tensors
    g_mixed = None if rel is None else g_mixed
    g_q, g_q_rel, g_key, g_value, g_rel = _attention_backward_op(
        g_out, g_mixed, q, q_rel, key, value, rel, index, weights, ctx.scale, ctx.chunk, ctx.triton
    )
    return g_q, _none_if_empty(g_q_rel), g_key, g_value, _none_if_empty(g_rel), None, None, None, None


_attention_op.register_autograd(_attention_grad, setup_context=_attention_setup)


def fused_attention(
    q: Tensor, key: Tensor, value: Tensor, index: Tensor, scale: float, chunk: int, q_rel: Tensor | None = None,
    rel: Tensor | None = None, triton: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Softmax attention of each row's query on its K indexed keys as one custom operator: the chunked function
    (rows in chunks of ``chunk``) or, with ``triton``, the Triton kernels.

    Shapes:
        q ``[R, h, d]``; key, value ``[S, h, d]`` (shared, indexed by ``index [R, K]`` long in ``[0, S)``);
        q_rel ``[R, e, h]`` (``W_2ᵀ q``) and rel ``[R, K, e]``: the position-code terms, both or neither.
        returns ``out [R, h, d]``, ``mixed [R, h, e]`` (``None`` without rel) and the weights ``[R, K, h]``
        (not differentiable).

    Under autocast every input is cast to the widest of their dtypes; the softmax runs in float32 at least.
    """
    dtype = widest_dtype(q, key, value, q_rel, rel)
    q, q_rel, key, value, rel = (None if t is None else t.to(dtype).contiguous() for t in (q, q_rel, key, value, rel))
    with torch.autocast(q.device.type, enabled=False):
        out, mixed, weights = _attention_op(q, q_rel, key, value, rel, index.contiguous(), scale, chunk, triton)
    return out, _none_if_empty(mixed), weights


@torch.library.custom_op("centroid::neighbour_max", mutates_args=())
def _neighbour_max_op(values: Tensor, index: Tensor, chunk: int, keep: bool, triton: bool) -> tuple[Tensor, Tensor]:
    if triton:
        from models.pairs.triton import triton_neighbour_max  # imports Triton: where it is asked for only

        top, winner = triton_neighbour_max(values, index, keep)
    else:
        top, winner = chunked_neighbour_max(values, index, chunk, keep)
    return top, _empty_if_none(winner, index)


@_neighbour_max_op.register_fake
def _(values, index, chunk, keep, triton):
    (R, K), C = index.shape, values.shape[1]
    winner = index.new_empty(R, C, dtype=winner_dtype(K)) if keep else index.new_empty(0)
    return values.new_empty(R, C), winner


@torch.library.custom_op("centroid::neighbour_max_backward", mutates_args=())
def _neighbour_max_backward_op(grad: Tensor, index: Tensor, winner: Tensor, sources: int, triton: bool) -> Tensor:
    _check_determinism("neighbour_max_backward", triton)
    if triton:
        from models.pairs.triton import triton_neighbour_max_backward  # imports Triton: where it is asked for only

        return triton_neighbour_max_backward(grad.contiguous(), index, winner, sources)
    return chunked_neighbour_max_backward(grad, index, winner, sources)


@_neighbour_max_backward_op.register_fake
def _(grad, index, winner, sources, triton):
    return grad.new_empty(sources, winner.shape[1])


def _neighbour_max_setup(ctx, inputs, output) -> None:
    values, index, _chunk, _keep, triton = inputs
    ctx.save_for_backward(index, output[1])
    ctx.sources, ctx.dtype, ctx.triton = values.shape[0], values.dtype, triton
    ctx.mark_non_differentiable(output[1])


def _neighbour_max_grad(ctx, grad, _g_winner):
    index, winner = ctx.saved_tensors
    grad = grad.to(ctx.dtype)  # compiled graphs may pass another dtype
    return _neighbour_max_backward_op(grad, index, winner, ctx.sources, ctx.triton), None, None, None, None


_neighbour_max_op.register_autograd(_neighbour_max_grad, setup_context=_neighbour_max_setup)


def fused_neighbour_max(values: Tensor, index: Tensor, chunk: int, triton: bool = False) -> Tensor:
    """``max_k values[index[r, k]]`` as one custom operator (chunked, or with ``triton`` the Triton kernels):
    values ``[S, C]``, index ``[R, K]`` long → ``[R, C]``. Backward routes each row's channel gradient to one
    winner (the last k among ties; a subgradient), remembered in forward as a small integer per row and channel,
    so backward is one scatter. A NaN among the neighbours gives NaN, as ``torch.amax``, with its gradient at k = 0.
    """
    keep = values.requires_grad and torch.is_grad_enabled()  # the winners are kept for backward only
    return _neighbour_max_op(values.contiguous(), index.contiguous(), chunk, keep, triton)[0]
