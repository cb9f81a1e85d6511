"""Centroid attention.

Lemeng Wu, Xingchao Liu, Qiang Liu, "Centroid Transformers: Learning to Abstract with Attention",
arXiv 2102.08606 (https://arxiv.org/abs/2102.08606). Equations and choices: ``shared/paper.md``.

One centroid attention step maps N inputs ``x_1..x_N`` (positions ``p_j``) to M centroids ``u_1..u_M``
(positions ``p_i``). With h heads of width d (``C = h * d``), per head:

    δ_ij = MLP(p_j − p_i)                                 (relative-position code, optional, §2)
    k_ij = W_k x_j + δ_ij,   v_ij = W_v x_j + δ_ij
    a_ij = softmax_j( (W_q u_i) · k_ij / √d )             (normalised over the inputs j, §1)
    u_i ← u_i + W_o [ Σ_j a_ij v_ij ]_heads

Symbols: ``u_i`` centroid features (the queries), ``x_j`` input features (keys and values), ``W_q, W_k,
W_v, W_o`` learned linear maps, ``a_ij`` attention of centroid i on input j. In **local** mode j runs over
the K nearest inputs of centroid i (indices given by the caller, cost ``O(M·K·C)``, no ``M×N`` matrix);
in **global** mode over all N inputs (``O(M·N)``). :class:`CentroidAttentionBlock` wraps the step in
pre-LayerNorm residuals with a feed-forward network and repeats it T times with shared weights. With
M = N, ``u = x``, T = 1, global mode and no position code it is exactly a pre-norm Transformer layer.

Shapes:
    u: ``[B, M, C]`` centroids (queries); x: ``[B, N, C_in]`` inputs (keys/values), M and N independent.
    pos_u: ``[B, M, 3]``; pos_x: ``[B, N, 3]`` (needed when ``pos_encoding=True``).
    neighbors: ``[B, M, K]`` long indices into the N inputs (local mode).
    output: ``[B, M, C]``; attention weights: ``[B, h, M, K]`` (local) or ``[B, h, M, N]`` (global).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.ops import gather

Mode = Literal["local", "global"]


@dataclass
class KeyValues:
    """Keys and values of the inputs, computed once and reused by every one of the T steps.

    ``key``/``value`` are ``[B, N, h, d]`` when shared by all centroids (global mode without position
    code) or ``[B, M, h, K, d]`` per centroid (local mode, or global mode with position code, K = N).
    ``index`` ``[B, M, K]`` long gives the input index of each per-centroid key (``None`` when shared).
    """

    key: Tensor
    value: Tensor
    index: Tensor | None
    num_inputs: int


class CentroidAttention(nn.Module):
    """Multi-head centroid attention: M centroids (queries) attend to N inputs (keys/values).

    Args:
        dim: width C of the centroids and of the output; ``dim % heads == 0``.
        heads: number of heads h (head width d = C / h).
        mode: ``"local"`` (each centroid attends to its K gathered neighbours) or ``"global"`` (all N).
        pos_encoding: add ``MLP(p_j − p_i)`` to keys and values (paper.md §2). In global mode this is an
            ``[B, M, N, C]`` tensor (memory ``O(M·N·C)``): use it for small sets only, or switch it off,
            which lets global mode use ``scaled_dot_product_attention`` with no per-pair tensor.
        clustering_norm: normalise over centroids first, then over inputs (paper.md §1 choice).
        reference: use the plain manual-softmax path (einsum) instead of ``scaled_dot_product_attention``.
        dropout: dropout on the attention weights (training only).
        kv_dim: width of the inputs x (default ``dim``): centroids and inputs may differ in width.

    Shapes: see the module docstring.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mode: Mode = "local",
        pos_encoding: bool = True,
        clustering_norm: bool = False,
        reference: bool = False,
        dropout: float = 0.0,
        kv_dim: int | None = None,
    ) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        if mode not in ("local", "global"):
            raise ValueError(f"mode must be 'local' or 'global', got {mode!r}")
        kv_dim = dim if kv_dim is None else kv_dim
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.mode, self.clustering_norm, self.reference, self.dropout = mode, clustering_norm, reference, dropout
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.to_out = nn.Linear(dim, dim)
        # paper.md §2 choice: a small MLP 3 → d → C of the relative position, added to keys and values.
        # Its hidden width is the head width d (not C): the last layer runs on M·K pairs, so C → C would
        # cost as much as the attention itself.
        self.pos_mlp = (
            nn.Sequential(nn.Linear(3, self.head_dim), nn.ReLU(), nn.Linear(self.head_dim, dim)) if pos_encoding else None
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, mode={self.mode}, pos_encoding={self.pos_mlp is not None}, "
            f"clustering_norm={self.clustering_norm}, reference={self.reference}"
        )

    # -- keys and values (fixed across the T steps) -------------------------------------------------
    def keys_values(
        self, x: Tensor, pos_u: Tensor | None = None, pos_x: Tensor | None = None, neighbors: Tensor | None = None
    ) -> KeyValues:
        """Project (and, in local mode, gather) the inputs once; the T steps only recompute queries."""
        B, N, _ = x.shape
        h, d = self.heads, self.head_dim
        if self.pos_mlp is not None and (pos_u is None or pos_x is None):
            raise ValueError("pos_encoding needs pos_u [B, M, 3] and pos_x [B, N, 3]")
        k, v = self.to_k(x), self.to_v(x)  # (B, N, C): project N inputs before gathering M·K copies
        if self.mode == "local":
            if neighbors is None:
                raise ValueError("local mode needs neighbors [B, M, K] (indices of each centroid's inputs)")
            index = neighbors
            k, v = gather(k, index), gather(v, index)  # (B, M, K, C)
        elif self.pos_mlp is not None:  # global with position code: every input is a neighbour
            M = pos_u.shape[1]
            index = torch.arange(N, device=x.device).expand(B, M, N)  # (B, M, N)
            k, v = k.unsqueeze(1).expand(-1, M, -1, -1), v.unsqueeze(1).expand(-1, M, -1, -1)  # (B, M, N, C)
        else:  # global without position code: keys shared by all centroids
            return KeyValues(k.view(B, N, h, d), v.view(B, N, h, d), None, N)
        if self.pos_mlp is not None:
            delta = self.pos_mlp(gather(pos_x, index) - pos_u.unsqueeze(2))  # δ_ij = MLP(p_j − p_i), (B, M, K, C)
            k, v = k + delta, v + delta
        M, K = index.shape[1], index.shape[2]
        k = k.reshape(B, M, K, h, d).transpose(2, 3)  # (B, M, h, K, d), a strided view
        v = v.reshape(B, M, K, h, d).transpose(2, 3)
        return KeyValues(k, v, index, N)

    # -- one attention step ---------------------------------------------------------------------------
    def attend(self, u: Tensor, kv: KeyValues, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``W_o Σ_j a_ij v_ij`` for every centroid; also the weights ``a`` when ``need_weights``.

        Returns the update ``[B, M, C]`` (not yet added to u) and ``[B, h, M, K|N]`` or ``None``.
        """
        B, M, _ = u.shape
        q = self.to_q(u).view(B, M, self.heads, self.head_dim)  # (B, M, h, d)
        p = self.dropout if self.training else 0.0
        if self.reference or self.clustering_norm or need_weights:
            out, weights = self._manual(q, kv, p)
            weights = weights if need_weights else None
        else:
            out, weights = self._sdpa(q, kv, p), None
        return self.to_out(out.reshape(B, M, self.dim)), weights

    def forward(
        self,
        u: Tensor,
        x: Tensor,
        pos_u: Tensor | None = None,
        pos_x: Tensor | None = None,
        neighbors: Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """One step: the update ``W_o Σ_j a_ij v_ij`` ``[B, M, C]`` and the weights (or ``None``)."""
        return self.attend(u, self.keys_values(x, pos_u, pos_x, neighbors), need_weights=return_attention)

    def _sdpa(self, q: Tensor, kv: KeyValues, p: float) -> Tensor:
        """Fast path via ``scaled_dot_product_attention``; returns ``[B, M, h, d]``."""
        B, M, h, d = q.shape
        if kv.index is None:  # global: one (M × N) attention per batch and head
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), kv.key.transpose(1, 2), kv.value.transpose(1, 2), dropout_p=p
            )  # (B, h, M, d)
            return out.transpose(1, 2)
        # per-centroid keys: every centroid is its own batch entry with one query and K keys
        K = kv.key.shape[3]
        key, value = kv.key.view(B * M, h, K, d), kv.value.view(B * M, h, K, d)  # (B·M, h, K, d)
        out = F.scaled_dot_product_attention(q.reshape(B * M, h, 1, d), key, value, dropout_p=p)  # (B·M, h, 1, d)
        return out.view(B, M, h, d)

    def _manual(self, q: Tensor, kv: KeyValues, p: float) -> tuple[Tensor, Tensor]:
        """Reference path written from the formula; returns ``[B, M, h, d]`` and the weights."""
        scale = 1.0 / math.sqrt(self.head_dim)
        if kv.index is None:
            logits = torch.einsum("bmhd,bnhd->bhmn", q, kv.key) * scale  # (B, h, M, N)
        else:
            logits = torch.einsum("bmhd,bmhkd->bhmk", q, kv.key) * scale  # (B, h, M, K)
        if self.clustering_norm:
            weights = _clustering_normalise(logits, kv.index, kv.num_inputs)
        else:
            weights = logits.softmax(dim=-1)  # a_ij = softmax over the inputs j (paper.md §1)
        dropped = F.dropout(weights, p) if p > 0 else weights
        if kv.index is None:
            out = torch.einsum("bhmn,bnhd->bmhd", dropped, kv.value)
        else:
            out = torch.einsum("bhmk,bmhkd->bmhd", dropped, kv.value)
        return out, weights


def _clustering_normalise(logits: Tensor, index: Tensor | None, num_inputs: int) -> Tensor:
    """**choice** (paper.md §1, off by default): soft k-means competition between centroids.

    ``ã_ij = softmax_i(logits_ij)`` over the centroids i that see input j, then
    ``a_ij = ã_ij / Σ_j' ã_ij'`` over the inputs of centroid i.

    Shapes: logits ``[B, h, M, N]`` (index ``None``) or ``[B, h, M, K]`` with index ``[B, M, K]``.
    """
    if index is None:
        competed = logits.softmax(dim=2)  # over centroids i
    else:  # input j appears in the neighbourhoods of some centroids only: a scatter-softmax over i
        B, h, M, K = logits.shape
        flat = logits.reshape(B, h, M * K)
        j = index.reshape(B, 1, M * K).expand(B, h, M * K)
        peak = flat.new_full((B, h, num_inputs), -torch.inf).scatter_reduce(-1, j, flat, "amax")  # (B, h, N)
        e = (flat - peak.gather(-1, j)).exp()
        total = torch.zeros_like(peak).scatter_add(-1, j, e)  # Σ_i over the centroids that see j
        competed = (e / total.gather(-1, j)).view(B, h, M, K)
    return competed / competed.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(competed.dtype).tiny)


def hard_assignment(weights: Tensor, index: Tensor | None, num_inputs: int) -> Tensor:
    """The centroid each input is assigned to: argmax over centroids of the head-averaged weights.

    Ties go to the lower centroid index. Inputs that no centroid attends to (local mode) get ``-1``.

    Shapes:
        weights: ``[B, h, M, N]`` (index ``None``) or ``[B, h, M, K]`` with index ``[B, M, K]`` long.
        returns ``[B, N]`` long.
    """
    w = weights.mean(dim=1)  # (B, M, K|N)
    if index is None:
        return w.argmax(dim=1)
    B, M, K = w.shape
    flat_w, j = w.reshape(B, M * K), index.reshape(B, M * K)
    best = flat_w.new_full((B, num_inputs), -torch.inf).scatter_reduce(1, j, flat_w, "amax")  # (B, N)
    centroid = torch.arange(M, device=w.device).repeat_interleave(K).expand(B, -1)  # (B, M·K)
    candidate = torch.where(flat_w == best.gather(1, j), centroid, M)  # M marks "not the winner"
    out = torch.full((B, num_inputs), M, dtype=torch.long, device=w.device).scatter_reduce(1, j, candidate, "amin")
    return out.masked_fill(out == M, -1)


class FeedForward(nn.Sequential):
    """Position-wise feed-forward network ``Linear → GELU → Dropout → Linear → Dropout``; ``[..., C] → [..., C]``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))


class CentroidAttentionBlock(nn.Module):
    """T steps of pre-LayerNorm centroid attention + feed-forward, with SHARED weights (paper.md §1).

    Per step t = 1..T (``x̂ = LN_x(x)`` computed once):

        u ← u + CentroidAttention(LN_u(u), x̂)
        u ← u + FFN(LN_f(u))

    Args:
        dim, heads, mode, pos_encoding, clustering_norm, reference, dropout, kv_dim: as in
            :class:`CentroidAttention`.
        steps: T, the number of unrolled steps (paper.md §1 choice: default 2).
        ffn_ratio: hidden width of the feed-forward network as a multiple of ``dim``.

    Shapes:
        u ``[B, M, C]``, x ``[B, N, C_in]`` → ``[B, M, C]`` and the last step's weights ``[B, h, M, K|N]``
        (when ``return_attention``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        steps: int = 2,
        ffn_ratio: float = 2.0,
        mode: Mode = "local",
        pos_encoding: bool = True,
        clustering_norm: bool = False,
        reference: bool = False,
        dropout: float = 0.0,
        kv_dim: int | None = None,
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps={steps} must be at least 1")
        self.steps = steps
        self.norm_u = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim if kv_dim is None else kv_dim)
        self.attn = CentroidAttention(dim, heads, mode, pos_encoding, clustering_norm, reference, dropout, kv_dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, round(dim * ffn_ratio), dropout)

    def extra_repr(self) -> str:
        return f"steps={self.steps}"

    def forward(
        self,
        u: Tensor,
        x: Tensor,
        pos_u: Tensor | None = None,
        pos_x: Tensor | None = None,
        neighbors: Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        kv = self.attn.keys_values(self.norm_x(x), pos_u, pos_x, neighbors)  # inputs are fixed across steps
        weights = None
        for t in range(self.steps):  # the same modules every step: the unrolled optimiser (paper.md §1)
            update, weights = self.attn.attend(self.norm_u(u), kv, need_weights=return_attention and t == self.steps - 1)
            u = u + update
            u = u + self.ffn(self.norm_ffn(u))
        return u, weights
