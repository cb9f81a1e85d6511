"""Large CPU buffers reused instead of fresh pages: glibc's allocator tuned for tensor workloads.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
returns it to the system on ``free``: a tensor that large is then zero-filled page by page by the kernel at
every step. At N = 32 768 most activations are above the threshold and a training step spent about a third
of its time in these page faults (docs/operator.md §7). With mmap off and freed memory kept, large blocks are
reused from the heap, as PyTorch's CUDA allocator reuses its cache.
"""

from __future__ import annotations

import ctypes

#: The same setting for child processes (read by glibc at start-up): mmap off, keep up to 2 GiB freed.
GLIBC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


def reuse_freed_memory() -> bool:
    """Apply :data:`GLIBC_ENV` to this process's later allocations; ``False`` where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
