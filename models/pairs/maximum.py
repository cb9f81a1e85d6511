"""The neighbour max, the entry point of every kernel: ``max_k values[index[r, k]]`` per row and channel."""

from __future__ import annotations

from torch import Tensor

from models.pairs.choose import Kernel, choose_kernel
from models.pairs.gathered import gathered_neighbour_max
from models.pairs.layout import chunk_rows
from models.pairs.operators import fused_neighbour_max


def neighbour_max(values: Tensor, index: Tensor, *, kernel: Kernel = "auto", max_rows: int | None = None) -> Tensor:
    """values ``[S, C]``, index ``[R, K]`` long in ``[0, S)`` → ``[R, C]``, as ``torch.amax`` of the gathered rows
    (NaN propagates). The chunked and Triton kernels route each gradient to one winner (the last k among ties, a
    subgradient; at k = 0 for a NaN maximum); the gathered kernel is autograd's ``amax`` (ties share it).
    ``kernel``: ``models.pairs.choose``; ``max_rows``: at most this many rows per chunk."""
    chosen = choose_kernel(kernel, values.device, "max")
    if chosen == "gathered":
        return gathered_neighbour_max(values, index)
    (R, K), C = index.shape, values.shape[1]
    return fused_neighbour_max(values, index, chunk_rows(R, K * C, values.device, max_rows), chosen == "triton")
