"""Per-pair work (M centroids × K neighbours): local attention, the neighbour max and the KNN max-pools.

One entry point per operation, each with a ``kernel`` option (docs/operator.md §7): :func:`local_attention`,
:func:`neighbour_max`, :func:`knn_max_pool`, :func:`knn_batchnorm_max_pool`. The kernel that runs is decided in
one function, :func:`choose_kernel` (``models.pairs.choose``); the kernels live in ``gathered`` (pure torch),
``chunked`` (wrapped as custom operators in ``operators``), ``csr`` and ``triton``.
"""

from models.pairs.attention import PairIndex, local_attention
from models.pairs.choose import KERNELS, Kernel, choose_kernel
from models.pairs.layout import chunk_rows
from models.pairs.maximum import neighbour_max
from models.pairs.norm import knn_batchnorm_max_pool, knn_max_pool

__all__ = [
    "KERNELS",
    "Kernel",
    "PairIndex",
    "choose_kernel",
    "chunk_rows",
    "knn_batchnorm_max_pool",
    "knn_max_pool",
    "local_attention",
    "neighbour_max",
]
