"""The ``"triton"`` kernel: the per-pair work as Triton kernels, for CUDA; each neighbour's rows are read once.

The chunked functions of ``models.pairs.chunked`` write every per-pair product (``[c, K, h, d]`` gathers,
products, sums) to memory and read it back; on a GPU that traffic, not arithmetic, set the step time
(docs/operator.md §7, *On a GPU*).

**Local attention** (:func:`triton_attention`, :func:`triton_attention_backward`): one program takes a block
of rows (centroids) and, head by head, gathers its K key rows, forms the logits, the softmax and the weighted
sum of the value rows in registers, and writes only the per-row results and the weights ``[R, K, h]``. The
backward kernel gathers the rows again and adds the key and value gradients into their ``[S, C]`` sources with
atomic adds (float32 buffers under bf16 or fp16). Same formulas and shapes as
:func:`models.pairs.operators.fused_attention` (``q [R, h, d]``, ``key/value [S, h, d]``, ``index [R, K]``,
position terms ``q_rel [R, e, h]`` and ``rel [R, K, e]``); sums are accumulated in float32 (float64 for float64
inputs).

**Neighbour max** (:func:`triton_neighbour_max`, :func:`triton_neighbour_max_backward`):
:func:`models.pairs.chunked.chunked_neighbour_max` in one pass, keeping the winning neighbour of each row and
channel; backward adds each gradient to its winner.

Plain functions: ``models.pairs.operators`` wraps them, with the chunked functions, in its custom operators
(what autograd and ``torch.compile`` see). Tested against the formulas and the chunked functions on the CPU
through Triton's interpreter (``TRITON_INTERPRET=1``) and, compiled, on CUDA (tests/models/test_pairs.py,
tests/models/test_triton_pairs.py).
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch import Tensor

from models.ops import widest_dtype
from models.pairs.layout import winner_dtype

#: Elements of one program's gathered tile (rows × K × head width) and warps per program: the fastest of five
#: settings (tiles of 1024-4096 elements, 4 or 8 warps) at the benchmark's stage shapes on an H200, fwd+bwd
#: 3.3× faster than the chunked function there (docs/operator.md §7).
TILE_ELEMENTS = 2048
NUM_WARPS = 4


@triton.jit
def _forward_kernel(
    q_ptr, q_rel_ptr, key_ptr, value_ptr, rel_ptr, index_ptr, out_ptr, mixed_ptr, weights_ptr, R, K, scale_hi,
    scale_lo,
    H: tl.constexpr, D: tl.constexpr, E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr, HAS_REL: tl.constexpr, F64: tl.constexpr,
):
    ACC = tl.float64 if F64 else tl.float32  # the sums' dtype
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    ks, ds, es = tl.arange(0, BLOCK_K), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_E)
    row_ok = rows < R
    pair_ok = row_ok[:, None] & (ks[None, :] < K)  # (BR, BK)
    row_d_ok = row_ok[:, None] & (ds[None, :] < D)  # (BR, BD)
    j = tl.load(index_ptr + rows[:, None] * K + ks[None, :], mask=pair_ok, other=0)  # (BR, BK)
    pair_d_ok = pair_ok[:, :, None] & (ds[None, None, :] < D)  # (BR, BK, BD)
    if HAS_REL:
        row_e_ok = row_ok[:, None] & (es[None, :] < E)
        rel = tl.load(rel_ptr + (rows[:, None, None] * K + ks[None, :, None]) * E + es[None, None, :],
                      mask=pair_ok[:, :, None] & (es[None, None, :] < E), other=0.0).to(ACC)  # (BR, BK, BE)
    for hh in tl.static_range(H):
        head = rows[:, None] * (H * D) + hh * D + ds[None, :]  # this head's channels of each row, (BR, BD)
        source = j[:, :, None] * (H * D) + hh * D + ds[None, None, :]  # ... of each neighbour, (BR, BK, BD)
        q = tl.load(q_ptr + head, mask=row_d_ok, other=0.0).to(ACC)
        keys = tl.load(key_ptr + source, mask=pair_d_ok, other=0.0).to(ACC)
        logits = tl.sum(keys * q[:, None, :], axis=2)  # q · k, (BR, BK)
        if HAS_REL:
            q_rel = tl.load(q_rel_ptr + rows[:, None] * (E * H) + es[None, :] * H + hh, mask=row_e_ok, other=0.0)
            logits += tl.sum(rel * q_rel.to(ACC)[:, None, :], axis=2)  # + q̃ · r
        logits = tl.where(pair_ok, logits * scale_hi + logits * scale_lo, float("-inf"))  # scale in two parts
        peak = tl.where(row_ok, tl.max(logits, axis=1), 0.0)
        p = tl.exp(logits - peak[:, None])
        a = p / tl.where(row_ok, tl.sum(p, axis=1), 1.0)[:, None]  # softmax over the K neighbours
        tl.store(weights_ptr + (rows[:, None] * K + ks[None, :]) * H + hh, a.to(weights_ptr.dtype.element_ty),
                 mask=pair_ok)
        values = tl.load(value_ptr + source, mask=pair_d_ok, other=0.0).to(ACC)
        tl.store(out_ptr + head, tl.sum(values * a[:, :, None], axis=1).to(out_ptr.dtype.element_ty), mask=row_d_ok)
        if HAS_REL:  # Σ_k a r, (BR, BE)
            mixed = tl.sum(rel * a[:, :, None], axis=1).to(mixed_ptr.dtype.element_ty)
            tl.store(mixed_ptr + (rows[:, None] * H + hh) * E + es[None, :], mixed, mask=row_e_ok)


@triton.jit
def _backward_kernel(
    q_ptr, q_rel_ptr, key_ptr, value_ptr, rel_ptr, index_ptr, weights_ptr, g_out_ptr, g_mixed_ptr, g_q_ptr,
    g_q_rel_ptr, g_key_ptr, g_value_ptr, g_rel_ptr, R, K, scale_hi, scale_lo, H: tl.constexpr, D: tl.constexpr,
    E: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    HAS_REL: tl.constexpr, F64: tl.constexpr,
):
    ACC = tl.float64 if F64 else tl.float32  # the sums' dtype
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    ks, ds, es = tl.arange(0, BLOCK_K), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_E)
    row_ok = rows < R
    pair_ok = row_ok[:, None] & (ks[None, :] < K)
    row_d_ok = row_ok[:, None] & (ds[None, :] < D)
    j = tl.load(index_ptr + rows[:, None] * K + ks[None, :], mask=pair_ok, other=0)
    pair_d_ok = pair_ok[:, :, None] & (ds[None, None, :] < D)
    if HAS_REL:
        row_e_ok = row_ok[:, None] & (es[None, :] < E)
        pair_e = (rows[:, None, None] * K + ks[None, :, None]) * E + es[None, None, :]
        pair_e_ok = pair_ok[:, :, None] & (es[None, None, :] < E)
        rel = tl.load(rel_ptr + pair_e, mask=pair_e_ok, other=0.0).to(ACC)  # (BR, BK, BE)
        g_rel = tl.zeros((BLOCK_R, BLOCK_K, BLOCK_E), dtype=ACC)  # summed over the heads
    for hh in tl.static_range(H):
        head = rows[:, None] * (H * D) + hh * D + ds[None, :]
        source = j[:, :, None] * (H * D) + hh * D + ds[None, None, :]
        a = tl.load(weights_ptr + (rows[:, None] * K + ks[None, :]) * H + hh, mask=pair_ok, other=0.0).to(ACC)
        go = tl.load(g_out_ptr + head, mask=row_d_ok, other=0.0).to(ACC)  # (BR, BD)
        values = tl.load(value_ptr + source, mask=pair_d_ok, other=0.0).to(ACC)
        g_a = tl.sum(values * go[:, None, :], axis=2)  # ∂/∂a = v · g_out, (BR, BK)
        g_v = (a[:, :, None] * go[:, None, :]).to(g_value_ptr.dtype.element_ty)
        tl.atomic_add(g_value_ptr + source, g_v, mask=pair_d_ok, sem="relaxed")
        if HAS_REL:
            g_m = tl.load(g_mixed_ptr + (rows[:, None] * H + hh) * E + es[None, :], mask=row_e_ok, other=0.0)
            g_m = g_m.to(ACC)
            g_a += tl.sum(rel * g_m[:, None, :], axis=2)  # + r · g_mixed
            g_rel += a[:, :, None] * g_m[:, None, :]
        g_logits = a * (g_a - tl.sum(a * g_a, axis=1)[:, None])
        g_logits = g_logits * scale_hi + g_logits * scale_lo  # softmax backward, (BR, BK)
        q = tl.load(q_ptr + head, mask=row_d_ok, other=0.0).to(ACC)
        keys = tl.load(key_ptr + source, mask=pair_d_ok, other=0.0).to(ACC)
        tl.store(g_q_ptr + head, tl.sum(keys * g_logits[:, :, None], axis=1).to(g_q_ptr.dtype.element_ty),
                 mask=row_d_ok)
        g_k = (g_logits[:, :, None] * q[:, None, :]).to(g_key_ptr.dtype.element_ty)
        tl.atomic_add(g_key_ptr + source, g_k, mask=pair_d_ok, sem="relaxed")
        if HAS_REL:
            q_rel_at = rows[:, None] * (E * H) + es[None, :] * H + hh
            q_rel = tl.load(q_rel_ptr + q_rel_at, mask=row_e_ok, other=0.0).to(ACC)
            g_q_rel = tl.sum(rel * g_logits[:, :, None], axis=1)  # (BR, BE)
            tl.store(g_q_rel_ptr + q_rel_at, g_q_rel.to(g_q_rel_ptr.dtype.element_ty), mask=row_e_ok)
            g_rel += g_logits[:, :, None] * q_rel[:, None, :]
    if HAS_REL:
        tl.store(g_rel_ptr + pair_e, g_rel.to(g_rel_ptr.dtype.element_ty), mask=pair_e_ok)


def _attention_launch(q: Tensor, index: Tensor, rel: Tensor | None) -> tuple[dict, tuple[int]]:
    """The attention kernels' constants and grid: shapes, and power-of-two tile sizes (Triton's ranges) for K
    neighbours, head width D and position width E."""
    (R, H, D), K, E = q.shape, index.shape[1], 1 if rel is None else rel.shape[-1]
    block_k, block_d, block_e = (triton.next_power_of_2(n) for n in (K, D, E))
    block_r = max(1, min(64, TILE_ELEMENTS // (block_k * max(block_d, block_e))))
    meta = dict(H=H, D=D, E=E, HAS_REL=rel is not None, F64=q.dtype == torch.float64, BLOCK_R=block_r,
                BLOCK_K=block_k, BLOCK_D=block_d, BLOCK_E=block_e)
    return meta, (triton.cdiv(R, block_r),)


def _float32_pair(x: float) -> tuple[float, float]:
    """``x`` as ``hi + lo``, both float32 numbers: Triton hands Python floats to kernels as float32, so a float64
    scale goes in two parts (``hi·l + lo·l`` is ``x·l`` to about 1e-14)."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, x - hi


def triton_attention(q: Tensor, q_rel: Tensor | None, key: Tensor, value: Tensor, rel: Tensor | None, index: Tensor,
                     scale: float) -> tuple[Tensor, Tensor | None, Tensor]:
    """The forward of :func:`models.pairs.operators.fused_attention` in one kernel (every input contiguous, of one
    dtype, on one device: the caller casts): ``out [R, h, d]``, ``mixed [R, h, e]`` (``None`` without ``rel``),
    weights."""
    (R, H, _), K = q.shape, index.shape[1]
    meta, grid = _attention_launch(q, index, rel)
    out, weights = torch.empty_like(q), q.new_empty(R, K, H)
    mixed = None if rel is None else q.new_empty(R, H, meta["E"])
    rel_or_q, q_rel_or_q = (q, q) if rel is None else (rel, q_rel)  # unused pointers when HAS_REL is false
    _forward_kernel[grid](
        q, q_rel_or_q, key, value, rel_or_q, index, out, out if mixed is None else mixed, weights, R, K,
        *_float32_pair(scale), num_warps=NUM_WARPS, **meta,
    )
    return out, mixed, weights


def triton_attention_backward(
    g_out: Tensor, g_mixed: Tensor | None, q: Tensor, q_rel: Tensor | None, key: Tensor, value: Tensor,
    rel: Tensor | None, index: Tensor, weights: Tensor, scale: float,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor | None]:
    """The backward of :func:`triton_attention` in one kernel (``g_out`` and ``g_mixed`` contiguous, in q's dtype):
    the gradients of q, q_rel, key, value and rel (``None`` for the position terms without ``rel``)."""
    (R, K), (meta, grid) = index.shape, _attention_launch(q, index, rel)
    sums = widest_dtype(q, torch.float32)  # atomic adds in float32 at least
    g_key = torch.zeros(key.shape, dtype=sums, device=key.device)
    g_value = torch.zeros(value.shape, dtype=sums, device=value.device)
    g_q, g_q_rel, g_rel = torch.empty_like(q), None, None
    if rel is not None:
        g_q_rel, g_rel = torch.empty_like(q_rel), torch.empty_like(rel)
    position = (q_rel, rel, g_mixed, g_q_rel, g_rel) if rel is not None else (q,) * 5  # unused pointers without rel
    q_rel_, rel_, g_mixed_, g_q_rel_, g_rel_ = position
    _backward_kernel[grid](
        q, q_rel_, key, value, rel_, index, weights, g_out, g_mixed_, g_q, g_q_rel_, g_key, g_value, g_rel_, R, K,
        *_float32_pair(scale), num_warps=NUM_WARPS, **meta,
    )
    return g_q, g_q_rel, g_key.to(key.dtype), g_value.to(value.dtype), g_rel


@triton.jit
def _neighbour_max_kernel(
    values_ptr, index_ptr, top_ptr, winner_ptr, R, K, C, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr, KEEP: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    ks, cs = tl.arange(0, BLOCK_K), tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pair_ok = (rows < R)[:, None] & (ks[None, :] < K)
    row_c_ok = (rows < R)[:, None] & (cs[None, :] < C)
    j = tl.load(index_ptr + rows[:, None] * K + ks[None, :], mask=pair_ok, other=0)
    z = tl.load(values_ptr + j[:, :, None] * C + cs[None, None, :], mask=pair_ok[:, :, None] & (cs[None, None, :] < C),
                other=float("-inf"))  # (BR, BK, BC)
    has_nan = tl.max(tl.where(z != z, 1, 0), axis=1) > 0
    top = tl.where(has_nan, float("nan"), tl.max(z, axis=1))  # NaN propagates, as torch.amax
    tl.store(top_ptr + rows[:, None] * C + cs[None, :], top, mask=row_c_ok)
    if KEEP:  # the last k reaching the maximum, as models.pairs.chunked keeps it: never a padded lane (a row
        # of −inf equals their −inf), k = 0 where none does (NaN)
        hit = pair_ok[:, :, None] & (z == top[:, None, :])
        winner = tl.max(tl.where(hit, ks[None, :, None], 0), axis=1)
        tl.store(winner_ptr + rows[:, None] * C + cs[None, :], winner.to(winner_ptr.dtype.element_ty), mask=row_c_ok)


@triton.jit
def _neighbour_max_backward_kernel(
    grad_ptr, winner_ptr, index_ptr, g_values_ptr, R, K, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (rows < R)[:, None] & (cs[None, :] < C)
    at = rows[:, None] * C + cs[None, :]
    k = tl.load(winner_ptr + at, mask=ok, other=0).to(tl.int64)
    j = tl.load(index_ptr + rows[:, None] * K + k, mask=ok, other=0)  # the winning input, (BR, BC)
    grad = tl.load(grad_ptr + at, mask=ok, other=0.0).to(g_values_ptr.dtype.element_ty)
    tl.atomic_add(g_values_ptr + j * C + cs[None, :], grad, mask=ok, sem="relaxed")


def _max_blocks(R: int, K: int, C: int) -> tuple[dict[str, int], tuple[int, int]]:
    block_k, block_c = triton.next_power_of_2(K), min(128, triton.next_power_of_2(C))
    block_r = max(1, min(64, TILE_ELEMENTS // (block_k * block_c)))
    return dict(BLOCK_R=block_r, BLOCK_C=block_c), (triton.cdiv(R, block_r), triton.cdiv(C, block_c))


def triton_neighbour_max(values: Tensor, index: Tensor, keep: bool) -> tuple[Tensor, Tensor | None]:
    """The forward of :func:`models.pairs.chunked.chunked_neighbour_max` in one kernel (contiguous inputs): each
    neighbour's row is read once; returns the maxima ``[R, C]`` and, with ``keep``, the winning k of each row and
    channel."""
    (R, K), C = index.shape, values.shape[1]
    top = values.new_empty(R, C)
    winner = torch.empty(R, C, dtype=winner_dtype(K), device=values.device) if keep else None
    blocks, grid = _max_blocks(R, K, C)
    _neighbour_max_kernel[grid](values, index, top, top if winner is None else winner, R, K, C,
                                BLOCK_K=triton.next_power_of_2(K), KEEP=keep, **blocks)
    return top, winner


def triton_neighbour_max_backward(grad: Tensor, index: Tensor, winner: Tensor, sources: int) -> Tensor:
    """The backward of :func:`triton_neighbour_max`: each gradient added to its winner (``grad`` contiguous)."""
    (R, K), C = index.shape, winner.shape[1]
    g_values = torch.zeros(sources, C, dtype=widest_dtype(grad, torch.float32), device=grad.device)
    blocks, grid = _max_blocks(R, K, C)
    _neighbour_max_backward_kernel[grid](grad, winner, index, g_values, R, K, C, **blocks)
    return g_values.to(grad.dtype)
