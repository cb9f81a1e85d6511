"""Centroid attention.

Lemeng Wu, Xingchao Liu, Qiang Liu, "Centroid Transformers: Learning to Abstract with Attention",
arXiv 2102.08606 (https://arxiv.org/abs/2102.08606). Equations, symbols and choices: ``docs/operator.md``.

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

from models.ops import flat_index, gather
from models.pairs import KERNELS, Kernel, PairIndex, local_attention

Mode = Literal["local", "global"]
#: How a step runs: ``"reference"``, the plain path written from the formula, or one of the per-pair kernels of
#: ``models.pairs`` (``"auto"``: chosen from the device, docs/operator.md §7).
AttentionKernel = Literal["reference", Kernel]


@dataclass
class KeyValues:
    """What the T steps share: the projected inputs and the hidden position code, computed once.

    ``key``/``value``: the projected inputs ``[B, N, C]``, shared by every centroid (global mode, ``index``
    ``None``) or indexed per centroid (local mode: ``index [B, M, K]`` long gives each centroid's K inputs;
    the fast path reads them through the index and never keeps a gathered copy). ``rel``: the hidden layer
    ``r_ij = ReLU(W_1 (p_j − p_i) + b_1)`` of the relative-position code,
    ``[B, M, K|N, e]``, or ``None`` without position code. The code's last layer ``δ_ij = W_2 r_ij + b_2`` is
    never built per pair on the fast path (see :meth:`CentroidAttention.attend`). ``pairs``: ``index`` into the
    flattened B·N inputs (local mode), with what the kernels derive from it, shared by the T steps.
    """

    key: Tensor
    value: Tensor
    rel: Tensor | None
    index: Tensor | None
    num_inputs: int
    pairs: PairIndex | None = None


class CentroidAttention(nn.Module):
    """Multi-head centroid attention: M centroids (queries) attend to N inputs (keys/values).

    Args:
        dim: width C of the centroids and of the output; ``dim % heads == 0``.
        heads: number of heads h (head width d = C / h).
        mode: ``"local"`` (each centroid attends to its K gathered neighbours) or ``"global"`` (all N).
        pos_encoding: add ``δ_ij = MLP(p_j − p_i)`` to keys and values (docs/operator.md §2).
        clustering_norm: normalise over centroids first, then over inputs (docs/operator.md §1 choice).
        dropout: dropout on the attention weights (training only; local mode then runs the gathered kernel).
        kv_dim: width of the inputs x (default ``dim``): centroids and inputs may differ in width.
        max_rows: the fast path processes at most this many centroids (B·M rows) per batched matmul
            (``None``: all at once). GPU kernels limit a launch's batch dimension (B·M > 65 535 broke the
            per-centroid SDPA call); chunking keeps every launch under any such limit.
        kernel: ``"reference"``, the plain path written from the formula (``k_ij + δ_ij`` built per pair,
            einsum and softmax), or the local attention's per-pair kernel (``models.pairs``: ``"auto"``, or
            ``"gathered"``, pure torch ops that ``torch.export`` and ONNX trace, ``"chunked"``, ``"csr"``,
            ``"triton"``); all are kept and tested against each other. Global mode runs batched matmuls or
            SDPA whatever the kernel but ``"reference"``.

    Shapes: see the module docstring.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mode: Mode = "local",
        pos_encoding: bool = True,
        clustering_norm: bool = False,
        dropout: float = 0.0,
        kv_dim: int | None = None,
        max_rows: int | None = 32768,
        kernel: AttentionKernel = "auto",
    ) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        if mode not in ("local", "global"):
            raise ValueError(f"mode must be 'local' or 'global', got {mode!r}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows={max_rows} must be at least 1 (or None)")
        if kernel != "reference" and kernel not in KERNELS:
            raise ValueError(f"unknown attention kernel {kernel!r}: use 'reference' or one of {', '.join(KERNELS)}")
        kv_dim = dim if kv_dim is None else kv_dim
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.mode, self.clustering_norm, self.dropout = mode, clustering_norm, dropout
        self.max_rows, self.kernel = max_rows, kernel
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.to_out = nn.Linear(dim, dim)
        # docs/operator.md §2 choice: a small MLP 3 → e → C of the relative position (e = d, the head width),
        # added to keys and values. Only its hidden layer runs on the M·K pairs; the last layer is moved out
        # of the pairs exactly (see `attend`).
        self.pos_mlp = (
            nn.Sequential(nn.Linear(3, self.head_dim), nn.ReLU(), nn.Linear(self.head_dim, dim))
            if pos_encoding
            else None
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, mode={self.mode}, pos_encoding={self.pos_mlp is not None}, "
            f"clustering_norm={self.clustering_norm}, kernel={self.kernel}"
        )

    # -- keys and values (fixed across the T steps) -------------------------------------------------
    def keys_values(
        self,
        x: Tensor,
        pos_u: Tensor | None = None,
        pos_x: Tensor | None = None,
        neighbors: Tensor | None = None,
        rel_pos: Tensor | None = None,
    ) -> KeyValues:
        """Project (and, in local mode, gather) the inputs once; the T steps only recompute queries.

        ``rel_pos`` ``[B, M, K|N, 3]``: the offsets ``p_j − p_i`` when the caller already has them (the stage
        computes them once for the KNN initialisation and the attention); otherwise built from the positions.
        """
        B, N, _ = x.shape
        if self.pos_mlp is not None and rel_pos is None and (pos_u is None or pos_x is None):
            raise ValueError("pos_encoding needs pos_u [B, M, 3] and pos_x [B, N, 3]")
        if self.mode == "local" and neighbors is None:
            raise ValueError("local mode needs neighbors [B, M, K] (indices of each centroid's inputs)")
        k, v = self.to_k(x), self.to_v(x)  # (B, N, C): the N inputs are projected once, read through the index
        index = neighbors if self.mode == "local" else None
        rel = None
        if self.pos_mlp is not None:
            if rel_pos is None:
                others = pos_x.unsqueeze(1) if index is None else gather(pos_x, index)  # (B, 1|M, N|K, 3)
                rel_pos = others - pos_u.unsqueeze(2)  # p_j − p_i, (B, M, K|N, 3)
            rel = self.pos_mlp[1](self.pos_mlp[0](rel_pos))  # r_ij, (B, M, K|N, e)
        pairs = None if index is None else PairIndex(flat_index(index, N).reshape(B * index.shape[1], -1), B * N)
        return KeyValues(k, v, rel, index, N, pairs)

    # -- one attention step ---------------------------------------------------------------------------
    def attend(
        self, u: Tensor, kv: KeyValues, need_weights: bool = False, gain: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """``W_o Σ_j a_ij v_ij`` for every centroid; also the weights ``a`` when ``need_weights``. ``gain`` ``[C]``
        (LayerScale γ) multiplies the output, folded into ``W_o`` (:func:`gained_linear`).

        Fast path (exact, docs/operator.md §2): with ``δ_ij = W_2 r_ij + b_2`` split per head h as
        ``W_2^h`` ``[d, e]``,

            q_i^h · (k_j^h + δ_ij^h) = q_i^h · k_j^h + (W_2^hᵀ q_i^h) · r_ij + q_i^h · b_2^h
            Σ_j a_ij (v_j^h + δ_ij^h) = Σ_j a_ij v_j^h + W_2^h (Σ_j a_ij r_ij) + b_2^h Σ_j a_ij

        so only the e-wide ``r_ij`` lives per pair; ``q_i^h · b_2^h`` is the same for every j and cancels in
        the softmax over j. Returns the update ``[B, M, C]`` (not yet added to u) and ``[B, h, M, K|N]`` or
        ``None``.
        """
        B, M, _ = u.shape
        q = self.to_q(u).view(B, M, self.heads, self.head_dim)  # (B, M, h, d)
        p = self.dropout if self.training else 0.0
        if self.kernel == "reference" or self.clustering_norm:  # clustering_norm: a formula of its own
            out, weights = self._manual(q, kv, p)
        elif kv.pairs is not None:
            out, weights = self._local(q, kv, p)
        elif kv.rel is None and not need_weights:
            out, weights = self._sdpa(q, kv, p), None
        else:
            out, weights = self._fast(q, kv, p)
        return gained_linear(out.reshape(B, M, self.dim), self.to_out, gain), weights if need_weights else None

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
        """Global mode without position code: one (M × N) SDPA per batch and head; returns ``[B, M, h, d]``."""
        B, N, h, d = q.shape[0], kv.num_inputs, self.heads, self.head_dim
        key, value = kv.key.view(B, N, h, d).transpose(1, 2), kv.value.view(B, N, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), key, value, dropout_p=p)  # (B, h, M, d)
        return out.transpose(1, 2)

    def _local(self, q: Tensor, kv: KeyValues, p: float) -> tuple[Tensor, Tensor]:
        """Per-centroid keys: :func:`models.pairs.local_attention` on the B·M rows, with the kernel asked for;
        returns ``[B, M, h, d]`` and the weights ``[B, h, M, K]``."""
        B, M, h, d = q.shape
        K = kv.index.shape[2]
        position = (None,) * 3
        if kv.rel is not None:  # the code's last layer W_2, b_2 per head: (h, d, e), (h, d)
            last = self.pos_mlp[2]
            position = (kv.rel.reshape(B * M, K, -1), last.weight.view(h, d, -1), last.bias.view(h, d))
        out, weights = local_attention(
            q.reshape(B * M, h, d), kv.key.reshape(-1, h, d), kv.value.reshape(-1, h, d), kv.pairs, d**-0.5,
            *position, kernel=self.kernel, dropout=p, max_rows=self.max_rows,
        )
        return out.view(B, M, h, d), weights.reshape(B, M, K, h).permute(0, 3, 1, 2)

    def _fast(self, q: Tensor, kv: KeyValues, p: float) -> tuple[Tensor, Tensor]:
        """Shared keys (global mode), chunked along the M centroids; ``[B, M, h, d]`` + weights ``[B, h, M, N]``."""
        B, M, h, d = q.shape
        chunk = M if self.max_rows is None else max(1, self.max_rows // B)
        if M <= chunk:
            return self._fast_rows(q, kv.key, kv.value, kv.rel, p)
        parts = [self._fast_rows(q[:, s : s + chunk], kv.key, kv.value, None if kv.rel is None else
                                 kv.rel[:, s : s + chunk], p) for s in range(0, M, chunk)]
        out = torch.cat([o for o, _ in parts], dim=1).view(B, M, h, d)
        return out, torch.cat([w for _, w in parts], dim=2)

    def _fast_rows(self, q: Tensor, key: Tensor, value: Tensor, rel: Tensor | None, p: float) -> tuple[Tensor, Tensor]:
        """Shared keys (global mode): Q queries of each of R = B clouds on its J = N keys, with batched matmuls.

        ``q [R, Q, h, d]``, key/value ``[R, J, C]``, rel ``[R, Q, J, e]`` → ``[R, Q, h, d]`` and the weights
        ``[R, h, Q, J]``.
        """
        R, Q, h, d = q.shape
        J = key.shape[1]
        qh = q.transpose(1, 2)  # (R, h, Q, d)
        kh = key.view(R, J, h, d).permute(0, 2, 3, 1)  # (R, h, d, J)
        vh = value.view(R, J, h, d).transpose(1, 2)  # (R, h, J, d)
        logits = qh @ kh  # (R, h, Q, J)
        if rel is not None:
            w2 = self.pos_mlp[2].weight.view(h, d, -1)  # W_2^h, (h, d, e)
            q_rel = torch.einsum("rhqd,hde->rqhe", qh, w2)  # W_2^hᵀ q_i^h, (R, Q, h, e)
            logits = logits + (q_rel @ rel.transpose(-1, -2)).transpose(1, 2)  # (R, Q, h, J) -> (R, h, Q, J)
        weights = (logits * self.head_dim**-0.5).softmax(dim=-1)  # a_ij: softmax over the inputs j (§1)
        dropped = F.dropout(weights, p) if p > 0 else weights
        out = (dropped @ vh).transpose(1, 2)  # (R, Q, h, d)
        if rel is not None:
            mixed = dropped.transpose(1, 2) @ rel  # Σ_j a_ij r_ij, (R, Q, h, e)
            bias = self.pos_mlp[2].bias.view(h, d)
            total = dropped.sum(-1).transpose(1, 2).unsqueeze(-1) if p > 0 else 1.0  # Σ_j a_ij
            out = out + torch.einsum("rqhe,hde->rqhd", mixed, w2) + bias * total
        return out, weights

    def _manual(self, q: Tensor, kv: KeyValues, p: float) -> tuple[Tensor, Tensor]:
        """Reference path written from the formula; returns ``[B, M, h, d]`` and the weights ``[B, h, M, K|N]``."""
        B, M, h, d = q.shape
        key, value = kv.key, kv.value
        if kv.index is not None:  # local: each centroid's K inputs, (B, M, K, C)
            key, value = gather(key, kv.index), gather(value, kv.index)
        if kv.rel is not None:  # δ_ij built per pair and added to keys and values, as the formula reads
            delta = self.pos_mlp[2](kv.rel)  # (B, M, K|N, C)
            if kv.index is None:
                key, value = key.unsqueeze(1), value.unsqueeze(1)  # (B, 1, N, C)
            key, value = key + delta, value + delta
        if key.dim() == 3:  # shared by every centroid
            key, value = key.unsqueeze(1), value.unsqueeze(1)  # (B, 1, N, C)
        key = key.reshape(*key.shape[:3], h, d)  # (B, M|1, J, h, d)
        value = value.reshape(*value.shape[:3], h, d)
        logits = torch.einsum("bmhd,bmjhd->bhmj", q, key.expand(B, M, -1, -1, -1)) / math.sqrt(d)  # (B, h, M, J)
        if self.clustering_norm:
            weights = _clustering_normalise(logits, kv.index, kv.num_inputs)
        else:
            weights = logits.softmax(dim=-1)  # a_ij = softmax over the inputs j (docs/operator.md §1)
        dropped = F.dropout(weights, p) if p > 0 else weights
        out = torch.einsum("bhmj,bmjhd->bmhd", dropped, value.expand(B, M, -1, -1, -1))
        return out, weights


def _clustering_normalise(logits: Tensor, index: Tensor | None, num_inputs: int) -> Tensor:
    """**choice** (docs/operator.md §1, off by default): soft k-means competition between centroids.

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


def gained_linear(x: Tensor, layer: nn.Linear, gain: Tensor | None) -> Tensor:
    """``gain ⊙ layer(x)`` as one linear map with weight ``diag(gain) W`` and bias ``gain ⊙ b``: the same
    numbers, but no ``[..., C]`` output is kept for the gain's gradient (docs/operator.md §7)."""
    if gain is None:
        return layer(x)
    return F.linear(x, layer.weight * gain.unsqueeze(1), layer.bias * gain)


class FeedForward(nn.Sequential):
    """Position-wise feed-forward network ``Linear → GELU → Dropout → Linear → Dropout``; ``[..., C] → [..., C]``.

    ``gain`` ``[C]`` (LayerScale γ) multiplies the output, folded into the last layer (:func:`gained_linear`).
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, gain: Tensor | None = None) -> Tensor:
        hidden = self[2](self[1](self[0](x)))
        return self[4](gained_linear(hidden, self[3], gain))


class CentroidAttentionBlock(nn.Module):
    """T steps of pre-LayerNorm centroid attention + feed-forward, with SHARED weights (docs/operator.md §1).

    Per step t = 1..T (``x̂ = LN_x(x)`` computed once):

        u ← u + γ_a ⊙ CentroidAttention(LN_u(u), x̂)
        u ← u + γ_f ⊙ FFN(LN_f(u))                      (left out with ``ffn_ratio=0``)

    ``γ_a, γ_f`` (LayerScale, docs/operator.md §6 choice) are per-channel gains started at ``layer_scale``;
    they only re-parametrise ``W_o`` and the FFN's last layer (the operator is unchanged) but let a stage
    start close to its KNN-initialised centroids and grow the attention from there. ``layer_scale=None``
    leaves them out (γ = 1).

    Args:
        dim, heads, mode, pos_encoding, clustering_norm, dropout, kv_dim, kernel: as in
            :class:`CentroidAttention`.
        steps: T, the number of unrolled steps (docs/operator.md §1 choice: default 2).
        ffn_ratio: hidden width of the feed-forward network as a multiple of ``dim``; ``0``: no feed-forward
            branch (the backbone configs' choice: it slowed learning, docs/operator.md §6).
        layer_scale: initial value of γ, or ``None`` for no gains.

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
        dropout: float = 0.0,
        kv_dim: int | None = None,
        layer_scale: float | None = None,
        kernel: AttentionKernel = "auto",
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps={steps} must be at least 1")
        if ffn_ratio < 0:
            raise ValueError(f"ffn_ratio={ffn_ratio} must be >= 0 (0: no feed-forward branch)")
        self.steps = steps
        self.norm_u = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim if kv_dim is None else kv_dim)
        self.attn = CentroidAttention(dim, heads, mode, pos_encoding, clustering_norm, dropout, kv_dim, kernel=kernel)
        hidden = round(dim * ffn_ratio)
        self.norm_ffn = nn.LayerNorm(dim) if hidden else None
        self.ffn = FeedForward(dim, hidden, dropout) if hidden else None
        self.gamma_attn = self.gamma_ffn = None
        if layer_scale is not None:
            self.gamma_attn = nn.Parameter(torch.full((dim,), float(layer_scale)))
            if hidden:
                self.gamma_ffn = nn.Parameter(torch.full((dim,), float(layer_scale)))

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
        rel_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``rel_pos`` ``[B, M, K, 3]``: precomputed offsets ``p_j − p_i``
        (see :meth:`CentroidAttention.keys_values`)."""
        kv = self.attn.keys_values(self.norm_x(x), pos_u, pos_x, neighbors, rel_pos)  # inputs fixed across steps
        weights = None
        for t in range(self.steps):  # the same modules every step: the unrolled optimiser (docs/operator.md §1)
            last = return_attention and t == self.steps - 1
            update, weights = self.attn.attend(self.norm_u(u), kv, need_weights=last, gain=self.gamma_attn)
            u = u + update
            if self.ffn is not None:
                u = u + self.ffn(self.norm_ffn(u), self.gamma_ffn)
        return u, weights
