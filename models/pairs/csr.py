"""The ``"csr"`` kernel: local attention as sparse matrix products (CSR), the CPU's fastest (docs/operator.md §7).

The R·K attention pairs of a stage (R = B·M centroid rows, K neighbours each, into S = B·N inputs) are the
non-zeros of a sparse ``[R, S]`` matrix; with h heads, of a ``[R·h, S·h]`` matrix whose row ``r·h + c`` holds
head c of row r and whose column ``j·h + c`` is head c of input j. Then, per head, with ``Q``, ``K``, ``V``
the ``[·, d]`` rows of queries, keys and values:

    logits = SDDMM(pattern, Q, Kᵀ)      (q_r · k_j at the non-zeros only: ``torch.sparse.sampled_addmm``)
    out    = A V,  ∂V = Aᵀ ∂out,  ∂Q = G K,  ∂K = Gᵀ Q          (SpMM, G the logits' gradient)

Sparse kernels read each neighbour's row once and accumulate in place: no ``[R, K, C]`` tensor is written,
and the transposed products (the scatters of the gradients) are SpMMs with the transposed pattern, built once
per stage (:class:`Pattern`) and shared by its T steps. Measured 4–5× faster than the chunked gathers of
:mod:`models.pairs.chunked` on 2 CPU cores (docs/operator.md §7); the chunked function stays the path on
accelerators and under ``torch.compile``. Same contract as :func:`models.pairs.operators.fused_attention`,
tested against the formula in float64.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from models.ops import widest_dtype


class Pattern:
    """The non-zeros of the head-expanded ``[R·h, S·h]`` attention matrix of rows attending to ``index``
    ``[R, K]`` long in ``[0, sources)``, and of its transpose (built on first use: inference never needs it).

    Values of the forward matrix are stored in ``(r, head, k)`` order (row ``r·h + c`` holds its K values
    contiguously); the transpose takes the same numbers in another order.
    """

    def __init__(self, index: Tensor, sources: int, heads: int) -> None:
        (self.rows, self.k), self.sources, self.heads = index.shape, sources, heads
        self.index = index
        R, K, h = self.rows, self.k, heads
        small = max(R * h * K, sources * h) < 2**31  # 32-bit indices: less memory, measured faster
        self.itype = torch.int32 if small else torch.long
        head = torch.arange(h, device=index.device).view(1, h, 1)
        self.col = (index.unsqueeze(1) * h + head).reshape(-1).to(self.itype)  # j·h + c of value (r, c, k)
        self.crow = torch.arange(0, R * h * K + 1, K, device=index.device).to(self.itype)
        self._transpose: tuple[Tensor, Tensor, Tensor] | None = None

    def matrix(self, values: Tensor) -> Tensor:
        """The ``[R·h, S·h]`` CSR matrix with ``values`` ``[R, h, K]``."""
        shape = (self.rows * self.heads, self.sources * self.heads)
        return _csr(self.crow, self.col, values.reshape(-1), shape)

    def transposed(self, values: Tensor) -> Tensor:
        """The ``[S·h, R·h]`` CSR transpose of :meth:`matrix` with the same ``values`` ``[R, h, K]``."""
        if self._transpose is None:
            self._transpose = self._build_transpose()
        crow_t, col_t, perm = self._transpose
        shape = (self.sources * self.heads, self.rows * self.heads)
        return _csr(crow_t, col_t, values.reshape(-1)[perm], shape)

    def sampled(self, a: Tensor, b: Tensor) -> Tensor:
        """``(a bᵀ)`` at the non-zeros: a ``[R·h, d]``, b ``[S·h, d]`` → ``[R, h, K]``."""
        zeros = self.matrix(a.new_zeros(self.rows, self.heads, self.k))
        return torch.sparse.sampled_addmm(zeros, a, b.t(), beta=0.0).values().view(self.rows, self.heads, self.k)

    def _build_transpose(self) -> tuple[Tensor, Tensor, Tensor]:
        """Row pointers, column indices and value order of the transpose. The pairs are grouped by input j (a
        stable sort of the R·K indices), then each group is spread over the h heads: row ``j·h + c`` of the
        transpose holds the ``count_j`` rows that see j, for head c."""
        R, K, h, device = self.rows, self.k, self.heads, self.index.device
        flat = self.index.reshape(-1)
        head = torch.arange(h, device=device)
        order = torch.argsort(flat, stable=True)  # pairs grouped by input, rows ascending within a group
        count = torch.bincount(flat, minlength=self.sources)  # (S,)
        start = count.cumsum(0) - count  # first sorted pair of each input
        j, r, k = flat[order], order // K, order % K
        within = torch.arange(R * K, device=device) - start[j]  # position of the pair in its input's group
        slot = ((h * start[j]).unsqueeze(1) + head * count[j].unsqueeze(1) + within.unsqueeze(1)).reshape(-1)
        row = (r * h).unsqueeze(1) + head  # (R·K, h): row r·h + c of each pair and head
        perm = torch.empty(R * K * h, dtype=torch.long, device=device)
        perm[slot] = (row * K + k.unsqueeze(1)).reshape(-1)  # the forward value's position
        col_t = torch.empty(R * K * h, dtype=self.itype, device=device)
        col_t[slot] = row.reshape(-1).to(self.itype)
        crow_t = torch.zeros(self.sources * h + 1, dtype=torch.long, device=device)
        crow_t[1:] = ((h * start).unsqueeze(1) + (head + 1) * count.unsqueeze(1)).reshape(-1)
        return crow_t.to(self.itype), col_t, perm


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # torch marks CSR support "beta"; the ops used here are tested
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class _CSRLocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, q_rel, key, value, rel, pattern: Pattern, scale: float):
        R, h, d = q.shape
        logits = pattern.sampled(q.reshape(R * h, d), key.reshape(-1, d))  # q_r · k_j, (R, h, K)
        if rel is not None:
            logits.baddbmm_(q_rel.transpose(1, 2), rel.transpose(1, 2))  # + q̃ · r
        a = (logits * scale).softmax(dim=-1)  # over the K inputs of each row and head
        out = (pattern.matrix(a) @ value.reshape(-1, d)).view(R, h, d)  # Σ_k a v
        mixed = None if rel is None else torch.bmm(a, rel)  # Σ_k a r, (R, h, e)
        ctx.save_for_backward(q, q_rel, key, value, rel, a)
        ctx.pattern, ctx.scale = pattern, scale
        ctx.mark_non_differentiable(a)
        return out, mixed, a

    @staticmethod
    def backward(ctx, g_out, g_mixed, _g_weights):
        q, q_rel, key, value, rel, a = ctx.saved_tensors
        pattern, (R, h, d) = ctx.pattern, q.shape
        g_out = g_out.contiguous().view(R * h, d)
        g_a = pattern.sampled(g_out, value.reshape(-1, d))  # ∂L/∂a = g_out · v_j, (R, h, K)
        g_value = (pattern.transposed(a) @ g_out).view_as(value)
        g_q_rel = g_rel = None
        if rel is not None:
            g_mixed = g_mixed.contiguous() if g_mixed is not None else q.new_zeros(R, h, rel.shape[-1])
            g_a.baddbmm_(g_mixed, rel.transpose(1, 2))  # + g_mixed · r
            g_rel = torch.bmm(a.transpose(1, 2), g_mixed)  # (R, K, e)
        g_logits = a * (g_a - (a * g_a).sum(-1, keepdim=True)) * ctx.scale  # softmax backward, (R, h, K)
        g_q = (pattern.matrix(g_logits) @ key.reshape(-1, d)).view_as(q)
        g_key = (pattern.transposed(g_logits) @ q.reshape(R * h, d)).view_as(key)
        if rel is not None:
            g_q_rel = torch.bmm(rel.transpose(1, 2), g_logits.transpose(1, 2))  # (R, e, h)
            g_rel.baddbmm_(g_logits.transpose(1, 2), q_rel.transpose(1, 2))
        return g_q, g_q_rel, g_key, g_value, g_rel, None, None


def csr_local_attention(
    q: Tensor,
    key: Tensor,
    value: Tensor,
    pattern: Pattern,
    scale: float,
    q_rel: Tensor | None = None,
    rel: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Softmax attention of each row's query on its K keys given by ``pattern``, with sparse products.

    Shapes: q ``[R, h, d]``; key, value ``[S, h, d]``; q_rel ``[R, e, h]`` and rel ``[R, K, e]`` (both or
    neither) → ``out [R, h, d]``, ``mixed [R, h, e]`` (``None`` without rel), weights ``[R, K, h]`` (a view,
    not differentiable), as :func:`models.pairs.operators.fused_attention`.

    The sparse kernels run in float32 or float64: under autocast every input is cast to the widest of their
    dtypes and float32 at least, and the outputs are returned in the widest input dtype.
    """
    if (q_rel is None) != (rel is None):
        raise ValueError("q_rel and rel are the position-code terms: give both or neither")
    dtype = widest_dtype(q, key, value, q_rel, rel)
    work = widest_dtype(dtype, torch.float32)
    cast = [None if t is None else t.to(work).contiguous() for t in (q, q_rel, key, value, rel)]
    with torch.autocast(q.device.type, enabled=False):
        out, mixed, weights = _CSRLocalAttention.apply(*cast, pattern, scale)
    mixed = None if mixed is None else mixed.to(dtype)
    return out.to(dtype), mixed, weights.to(dtype).transpose(1, 2)
