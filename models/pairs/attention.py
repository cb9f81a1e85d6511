"""Local attention, the entry point of every kernel (docs/operator.md §2, §7).

Each row r (a centroid; R = B·M) attends to K of S shared inputs, given by a flat index. Per head h of width d,
with the position code ``δ_rk = W_2 r_rk + b_2`` split per head (``W_2^h`` ``[d, e]``, ``r_rk`` the code's
hidden layer, width e):

    a_rk = softmax_k( s · q_r^h · (k_j^h + δ_rk^h) ),      out_r^h = Σ_k a_rk (v_j^h + δ_rk^h),   j = j(r, k)

computed exactly in the factorised form ``q·(k + δ) = q·k + (W_2^hᵀ q)·r + q·b_2`` (the last term is the same for
every k and cancels in the softmax) and ``Σ a (v + δ) = Σ a v + W_2^h Σ a r + b_2 Σ a``: only the e-wide r_rk
lives per pair.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.pairs.choose import Kernel, choose_kernel
from models.pairs.csr import Pattern, csr_local_attention
from models.pairs.gathered import gathered_attention
from models.pairs.layout import chunk_rows
from models.pairs.operators import fused_attention


class PairIndex:
    """The neighbours of R rows among S sources: ``index`` ``[R, K]`` long in ``[0, sources)``. What a kernel
    derives from the index alone (the CSR pattern) is built on first use and kept: the T steps of a stage share it.
    """

    def __init__(self, index: Tensor, sources: int) -> None:
        self.index, self.sources = index, sources
        self._patterns: dict[int, Pattern] = {}

    def pattern(self, heads: int) -> Pattern:
        """The sparse pattern of the head-expanded attention matrix (``models.pairs.csr``)."""
        if heads not in self._patterns:
            self._patterns[heads] = Pattern(self.index, self.sources, heads)
        return self._patterns[heads]


def local_attention(
    q: Tensor,
    key: Tensor,
    value: Tensor,
    index: Tensor | PairIndex,
    scale: float,
    rel: Tensor | None = None,
    w2: Tensor | None = None,
    b2: Tensor | None = None,
    *,
    kernel: Kernel = "auto",
    dropout: float = 0.0,
    max_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Softmax attention of each row's query on its K indexed keys, plus the position code (module docstring).

    Shapes:
        q ``[R, h, d]``; key, value ``[S, h, d]`` (shared, indexed by ``index`` ``[R, K]`` long in ``[0, S)``);
        the position code, all three or none: rel ``[R, K, e]``, w2 ``[h, d, e]`` (``W_2`` per head), b2 ``[h, d]``.
        returns ``[R, h, d]`` and the weights ``[R, K, h]`` (before dropout; not differentiable but with the
        ``"gathered"`` kernel).

    ``kernel``: which implementation runs (``models.pairs.choose``; ``"auto"`` decides from the device).
    ``dropout``: attention dropout on the weights, the caller's (0 outside training); runs the gathered kernel.
    ``max_rows``: at most this many rows per launch (``None``: as many as the kernel likes).
    """
    if not (rel is None) == (w2 is None) == (b2 is None):
        raise ValueError("rel, w2 and b2 are the position code: give all three or none")
    pairs = index if isinstance(index, PairIndex) else PairIndex(index, key.shape[0])
    chosen = choose_kernel(kernel, q.device, "attention", dropout)
    if chosen == "gathered":
        return gathered_attention(q, key, value, pairs.index, scale, None if rel is None else (rel, w2, b2), dropout,
                                  max_rows)
    (R, h, d), K = q.shape, pairs.index.shape[1]
    q_rel = None if rel is None else torch.einsum("rhd,hde->reh", q, w2)  # W_2^hᵀ q_i^h, (R, e, h)
    if chosen == "csr":
        out, mixed, weights = csr_local_attention(q, key, value, pairs.pattern(h), scale, q_rel, rel)
    else:
        chunk = chunk_rows(R, K * h * d, q.device, max_rows)
        out, mixed, weights = fused_attention(q, key, value, pairs.index, scale, chunk, q_rel, rel, chosen == "triton")
    if rel is not None:  # + W_2^h Σ_j a_ij r_ij + b_2^h (the weights sum to 1)
        out = out + torch.einsum("rhe,hde->rhd", mixed, w2) + b2
    return out, weights
