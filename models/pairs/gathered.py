"""The ``"gathered"`` kernel: the per-pair work in plain torch operators on gathered neighbours.

No custom operator and no ``autograd.Function``: ``torch.export``, ONNX export and
``torch.utils.flop_counter`` trace every step, and autograd writes the backward. The products are ``einsum``s
(batched matmuls, which the FLOP counter sees and which were measured faster on CPU than broadcast multiplies
summed over an axis). Keeps ``[R, K, C]`` gathered tensors for backward; the only kernel with attention dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gathered_attention(
    q: Tensor, key: Tensor, value: Tensor, index: Tensor, scale: float, position: tuple[Tensor, Tensor, Tensor] | None,
    dropout: float = 0.0, max_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Local attention with the factorised position code (:func:`models.pairs.local_attention`), at most
    ``max_rows`` rows at a time. ``position``: ``(rel [R, K, e], w2 [h, d, e], b2 [h, d])`` or ``None``;
    ``dropout``: on the weights (the caller passes 0 outside training). Returns ``[R, h, d]`` and the weights
    ``[R, K, h]`` (before dropout)."""
    R = q.shape[0]
    chunk = R if max_rows is None else max_rows
    if R <= chunk:  # one launch: no slicing (a slice's backward would copy the whole gradient)
        return _rows(q, key, value, index, scale, position, dropout)
    parts = [_rows(q[s : s + chunk], key, value, index[s : s + chunk], scale,
                   None if position is None else (position[0][s : s + chunk], *position[1:]), dropout)
             for s in range(0, R, chunk)]
    return torch.cat([o for o, _ in parts]), torch.cat([w for _, w in parts])


def _rows(
    q: Tensor, key: Tensor, value: Tensor, index: Tensor, scale: float, position: tuple[Tensor, Tensor, Tensor] | None,
    dropout: float,
) -> tuple[Tensor, Tensor]:
    (R, h, d), K = q.shape, index.shape[1]
    flat = index.reshape(-1)
    logits = torch.einsum("rkhd,rhd->rkh", key.index_select(0, flat).view(R, K, h, d), q)  # q_i^h · k_j^h
    if position is not None:
        rel, w2, b2 = position
        q_rel = torch.einsum("rhd,hde->reh", q, w2)  # W_2^hᵀ q_i^h, (R, e, h)
        logits = logits + rel @ q_rel  # + (W_2^hᵀ q_i^h) · r_ij, (R, K, h)
    weights = (logits * scale).softmax(dim=1)  # a_ij: softmax over the inputs j (docs/operator.md §1)
    dropped = F.dropout(weights, dropout) if dropout > 0 else weights
    out = torch.einsum("rkh,rkhd->rhd", dropped, value.index_select(0, flat).view(R, K, h, d))  # Σ_j a_ij v_j^h
    if position is not None:
        mixed = dropped.transpose(1, 2) @ rel  # Σ_j a_ij r_ij, (R, h, e)
        total = dropped.sum(1).unsqueeze(-1) if dropout > 0 else 1.0  # Σ_j a_ij, (R, h, 1)
        out = out + torch.einsum("rhe,hde->rhd", mixed, w2) + b2 * total
    return out, weights


def gathered_neighbour_max(values: Tensor, index: Tensor) -> Tensor:
    """``max_k values[index[r, k]]``: values ``[S, C]``, index ``[R, K]`` long → ``[R, C]`` (``torch.amax``: ties
    share the gradient)."""
    return values.index_select(0, index.reshape(-1)).view(*index.shape, -1).amax(dim=1)


def gathered_knn_max_pool(
    source: Tensor, offsets: Tensor, w_pos: Tensor, norm: torch.nn.LayerNorm, index: Tensor
) -> Tensor:
    """``max_k LN(source_{j(r,k)} + W_p o_rk)`` with the ``[R, K, C]`` pairs built (shapes as
    :func:`models.pairs.knn_max_pool`)."""
    pairs = source.index_select(0, index.reshape(-1)).view(*index.shape, -1) + offsets @ w_pos.t()  # (R, K, C)
    return norm(pairs).amax(dim=1)
