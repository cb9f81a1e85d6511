"""The one place where the kernel of a per-pair operation is chosen (docs/operator.md §7).

Kernels (every one computes the same function, tested against the formulas in float64):

- ``"gathered"``: pure torch operators on gathered neighbours (``index_select``, ``einsum``, ``softmax``, ``amax``):
  no custom operator and no ``autograd.Function``, so ``torch.export``, ONNX export and
  ``torch.utils.flop_counter`` see every product. Keeps ``[R, K, C]`` tensors for backward. The only kernel
  with attention dropout.
- ``"chunked"``: rows in cache-sized chunks with hand-written backward passes, one custom operator
  (``models.pairs.operators``); runs on every device and under ``torch.compile``.
- ``"csr"``: local attention as sparse matrix products (``models.pairs.csr``), the CPU's fastest.
- ``"triton"``: Triton kernels (``models.pairs.triton``), the GPU's fastest; on CPU tensors only through
  Triton's interpreter (tests).
- ``"auto"``: decided here from the device, the dropout, ``torch.compile`` and deterministic algorithms.
"""

from __future__ import annotations

from typing import Literal

import torch

from models.ops import TRITON

Kernel = Literal["auto", "gathered", "chunked", "csr", "triton"]
#: The per-pair operations: local attention, the neighbour max (BatchNorm KNN pooling), the LayerNorm KNN pooling.
Operation = Literal["attention", "max", "layer_norm_max"]
KERNELS: tuple[Kernel, ...] = ("auto", "gathered", "chunked", "csr", "triton")
#: The kernels each operation has; an explicit kernel an operation lacks runs as ``"chunked"``.
_HAS: dict[Operation, tuple[Kernel, ...]] = {
    "attention": ("gathered", "chunked", "csr", "triton"),
    "max": ("gathered", "chunked", "triton"),
    "layer_norm_max": ("gathered", "chunked"),
}


def choose_kernel(
    kernel: Kernel, device: torch.device, operation: Operation = "attention", dropout: float = 0.0
) -> Kernel:
    """The kernel that runs ``operation`` on ``device``: never ``"auto"``.

    - Attention dropout (``dropout > 0``) runs ``"gathered"``, whatever was asked: no other kernel has it.
    - ``"auto"``: ``"triton"`` on CUDA where Triton is installed, unless deterministic algorithms are asked for
      (``torch.use_deterministic_algorithms``, Lightning's ``deterministic: true``: the Triton backward adds
      gradients with atomic adds, in no fixed order; the chunked scatter adds then run torch's deterministic
      kernels); else ``"csr"`` for attention on the CPU outside ``torch.compile`` (its graphs hold no sparse
      tensors); else ``"chunked"``.
    - An explicit kernel runs as asked (``"triton"`` on CPU tensors through Triton's interpreter), or as
      ``"chunked"`` where the operation has no such kernel (``"csr"``'s neighbour max, the LayerNorm pooling's
      ``"csr"`` and ``"triton"``).
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown per-pair kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    if dropout > 0 and operation == "attention":
        return "gathered"
    if kernel == "auto":
        if TRITON and device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
            kernel = "triton"
        elif operation == "attention" and device.type == "cpu" and not torch.compiler.is_compiling():
            kernel = "csr"
        else:
            kernel = "chunked"
    if kernel == "triton" and not TRITON:
        raise ValueError("kernel 'triton' needs Triton installed (the dev extras bring it on Linux x86-64)")
    if kernel == "csr" and operation == "attention" and torch.compiler.is_compiling():
        raise ValueError("kernel 'csr' cannot run under torch.compile (its graphs hold no sparse tensors)")
    return kernel if kernel in _HAS[operation] else "chunked"
