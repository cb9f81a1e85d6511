"""The KNN max-pool of normalised pairs, the per-pair part of the KNN initialisation (docs/operator.md §2, §7):
``y_r = max_k N(x_{j(r,k)} + W_p (p_j − p_r))`` per channel, with N a LayerNorm of each pair
(:func:`knn_max_pool`) or a BatchNorm of each channel over all pairs (:func:`knn_batchnorm_max_pool`, the
default, which never builds a pair), ``nn.SyncBatchNorm`` statistics over every process included.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from models.ops import widest_dtype
from models.pairs.choose import Kernel, choose_kernel
from models.pairs.chunked import chunked_knn_max_pool
from models.pairs.gathered import gathered_knn_max_pool
from models.pairs.layout import chunk_rows
from models.pairs.maximum import neighbour_max


def knn_max_pool(
    source: Tensor, offsets: Tensor, w_pos: Tensor, norm: torch.nn.LayerNorm, index: Tensor, *, kernel: Kernel = "auto",
    max_rows: int | None = None,
) -> Tensor:
    """``max_k LN(source_{j(r,k)} + W_p o_rk)`` per channel, with LN a LayerNorm of each pair.

    Shapes:
        source ``[S, C]``; offsets ``[R, K, 3]`` (o_rk = p_j − p_r); w_pos ``[C, 3]`` (``W_p``); index ``[R, K]``
        long in ``[0, S)``; norm: an affine LayerNorm over C. Returns ``[R, C]``.

    ``kernel``: ``"gathered"`` builds the pairs with autograd; every other kernel runs the chunked function
    (``models.pairs.chunked``: no pair kept for backward; under autocast every input cast to the widest dtype).
    """
    if choose_kernel(kernel, source.device, "layer_norm_max") == "gathered":
        return gathered_knn_max_pool(source, offsets, w_pos, norm, index)
    (R, K), C = index.shape, source.shape[1]
    return chunked_knn_max_pool(source, offsets, w_pos, norm, index, chunk_rows(R, K * C, source.device, max_rows))


def knn_batchnorm_max_pool(
    source: Tensor, points: Tensor, centres: Tensor, w_pos: Tensor, norm: _BatchNorm, index: Tensor, *,
    kernel: Kernel = "auto", max_rows: int | None = None,
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
    Computed in float32 at least. ``kernel``, ``max_rows``: of the neighbour max (:func:`neighbour_max`).
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
        top = neighbour_max(b * sign, index, kernel=kernel, max_rows=max_rows)
        extreme = top * sign - c  # z at each row's extreme pair, (R, C)
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
