"""How the per-pair work is laid out in memory: rows per chunk, and the dtype of the neighbour max's winners.

A leaf of ``models.pairs``: the chunked functions and the Triton kernels both read it, neither reads the other.
"""

from __future__ import annotations

import torch

#: Elements of one chunk's gathered keys on CPU (R_chunk·K·C): 2^19 floats = 2 MiB, about an L2 cache.
CPU_CHUNK_ELEMENTS = 1 << 19


def chunk_rows(rows: int, per_row: int, device: torch.device, max_rows: int | None) -> int:
    """Rows per chunk: cache-sized on CPU; on an accelerator as many as ``max_rows`` allows (fewer launches)."""
    limit = rows if max_rows is None else max_rows
    if device.type == "cpu":
        limit = min(limit, max(16, CPU_CHUNK_ELEMENTS // max(per_row, 1)))
    return max(1, min(rows, limit))


def winner_dtype(k: int) -> torch.dtype:
    """The winning k of each row and channel of a neighbour max is kept as a small integer."""
    return torch.int16 if k < 2**15 else torch.int32
