"""What only the Triton kernels of ``models.pairs.triton`` do (float32 sums under bf16, atomic adds, the CUDA
dispatch), at the level of the fused operators (``models.pairs.operators``, without the position code's last
layer); their parity with the formulas, beside every other kernel, is in tests/models/test_pairs.py. Compiled on
CUDA; elsewhere on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py``
before Triton is imported)."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from models.pairs import local_attention, neighbour_max
from models.pairs.operators import _warn_atomic_adds, fused_attention, fused_neighbour_max
from tests.models.test_pairs import _attention_inputs, deterministic, non_finite_rows  # noqa: F401 -- deterministic: a fixture

pytest.importorskip("triton", reason="Triton is not installed (the dev extras bring it on Linux x86-64)")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _attention_formula(q, key, value, index, scale, q_rel=None, rel=None):
    """The fused operators' contract: ``out``, ``mixed = Σ a r`` (or ``None``) and the weights."""
    logits = (key[index] * q.unsqueeze(1)).sum(-1)  # (R, K, H)
    if rel is not None:
        logits = logits + rel @ q_rel
    a = (logits * scale).softmax(dim=1)
    out = (value[index] * a.unsqueeze(-1)).sum(1)
    return out, None if rel is None else a.transpose(1, 2) @ rel, a


def triton_local_attention(q, key, value, index, scale, q_rel=None, rel=None):
    return fused_attention(q, key, value, index, scale, 0, q_rel, rel, triton=True)


def chunked_local_attention(q, key, value, index, scale, q_rel=None, rel=None):
    return fused_attention(q, key, value, index, scale, 64, q_rel, rel, triton=False)


#: (R, S, K, H, D, E): sizes off the powers of two (masked tiles) and rows spanning several programs.
SIZES = [(11, 20, 5, 2, 3, 4), (150, 60, 16, 4, 8, 8)]


def _inputs(
    sizes: tuple[int, ...], rel: bool, dtype: torch.dtype, seed: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    R, S, K, H, D, E = sizes
    g = torch.Generator().manual_seed(seed)
    shapes = [(R, H, D), (S, H, D), (S, H, D)] + ([(R, E, H), (R, K, E)] if rel else [])
    tensors = [torch.randn(*s, generator=g, dtype=torch.float64).to(DEVICE, dtype).requires_grad_() for s in shapes]
    return tensors, torch.randint(0, S, (R, K), generator=g).to(DEVICE)


def _outputs_and_grads(fn, tensors: list[torch.Tensor], index: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """out, mixed (if any), weights and the gradients of every input for fixed random output gradients."""
    q, key, value, *position = tensors
    out, mixed, weights = fn(q, key, value, index, 0.7, *position)
    g = torch.Generator().manual_seed(seed)
    produced = [out] if mixed is None else [out, mixed]
    grads = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype) for t in produced]
    return [*produced, weights, *torch.autograd.grad(produced, tensors, grads)]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("rel", [True, False])
def test_triton_local_attention_equals_its_formula(sizes: tuple[int, ...], rel: bool) -> None:
    tensors, index = _inputs(sizes, rel, torch.float64, seed=1)
    got = _outputs_and_grads(triton_local_attention, tensors, index, seed=2)
    want = _outputs_and_grads(_attention_formula, tensors, index, seed=2)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_triton_local_attention_passes_gradcheck() -> None:
    tensors, index = _inputs(SIZES[0], True, torch.float64, seed=3)
    q, key, value, q_rel, rel = tensors
    assert torch.autograd.gradcheck(
        lambda *t: triton_local_attention(t[0], t[1], t[2], index, 0.7, t[3], t[4])[:2],
        (q, key, value, q_rel, rel), fast_mode=True,
    )


def test_triton_local_attention_sums_bf16_in_float32() -> None:
    """bf16 inputs: every result within 1 % (relative norm) of the float64 formula, and no further from it than
    the chunked function's (float32 sums and atomic adds; the chunked function sums products rounded to bf16)."""
    tensors, index = _inputs(SIZES[1], True, torch.bfloat16, seed=4)
    got = _outputs_and_grads(triton_local_attention, tensors, index, seed=5)
    chunked = _outputs_and_grads(chunked_local_attention, tensors, index, seed=5)
    wide = [t.detach().double().requires_grad_() for t in tensors]
    want = _outputs_and_grads(_attention_formula, wide, index, seed=5)
    for a, c, b in zip(got, chunked, want, strict=True):
        assert a.dtype == torch.bfloat16
        error, chunked_error = ((t.detach().double() - b).norm() / b.norm() for t in (a, c))
        assert error < 1e-2 and error <= chunked_error


def test_triton_neighbour_max_equals_the_chunked_function() -> None:
    """Same maxima, same winners among ties (the last k), so the same gradients; none kept without grad."""
    g = torch.Generator().manual_seed(6)
    values = torch.randn(60, 200, generator=g, dtype=torch.float64).round().to(DEVICE)  # many exact ties
    index = torch.randint(0, 60, (150, 16), generator=g).to(DEVICE)
    weights = torch.randn(150, 200, generator=g, dtype=torch.float64).to(DEVICE)
    results = []
    for triton in (True, False):
        leaf = values.clone().requires_grad_()
        top = fused_neighbour_max(leaf, index, 7, triton=triton)
        results += [top, torch.autograd.grad((top * weights).sum(), leaf)[0]]
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)
    # the same winners; on CUDA both sum a winner's gradients by atomic adds, in an order of their own
    torch.testing.assert_close(results[1], results[3], rtol=0, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(fused_neighbour_max(values, index, 7, triton=True), results[2])


def test_triton_neighbour_max_of_non_finite_rows() -> None:
    """−inf, +inf and NaN rows, K = 5 in 8 lanes: NaN propagates, and no padded lane wins (a row of −inf picked
    k = 7 before, so backward added into another row's neighbour or past the end of the index)."""
    values, index, want = (t.to(DEVICE) for t in non_finite_rows())
    leaf = values.clone().requires_grad_()
    top = neighbour_max(leaf, index, kernel="triton")
    torch.testing.assert_close(top, values[index].amax(dim=1), rtol=0, atol=0, equal_nan=True)
    (grad,) = torch.autograd.grad(top.sum(), leaf)
    torch.testing.assert_close(grad, want, rtol=0, atol=0)


@pytest.mark.usefixtures("deterministic")
def test_triton_backward_warns_once_under_deterministic_algorithms() -> None:
    """The Triton backward asked for explicitly under deterministic algorithms: one warning per operator naming it
    (its atomic adds have no fixed order), none after."""
    tensors, index = _inputs(SIZES[0], True, torch.float64, seed=9)
    values = torch.randn(SIZES[0][1], 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    backward = {
        "local_attention_backward": lambda: _outputs_and_grads(triton_local_attention, tensors, index, seed=10),
        "neighbour_max_backward": lambda: neighbour_max(values, index, kernel="triton").sum().backward(),
    }
    _warn_atomic_adds.cache_clear()
    for op, run in backward.items():
        with pytest.warns(UserWarning, match=f"centroid::{op}: the Triton backward adds gradients with atomic adds"):
            run()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_dispatch_runs_the_triton_kernels_and_matches_the_cpu() -> None:
    """On CUDA ``kernel="auto"`` dispatches to the compiled kernels (stage-sized, float32): they match the CPU."""
    tensors, index = _attention_inputs(7, sizes=(40_000, 20_000, 16, 4, 32, 32), dtype=torch.float32)
    results = []
    for device in ("cuda", "cpu"):  # auto: the Triton kernels, then the CPU's sparse products
        leaves = [t.detach().to(device).requires_grad_() for t in tensors]
        out, weights = local_attention(*leaves[:3], index.to(device), 0.7, *leaves[3:], max_rows=4096)
        g_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(8)).to(device)
        results.append([out, weights, *torch.autograd.grad(out, leaves, g_out)])
    assert "models.pairs.triton" in sys.modules and results[0][0].is_cuda
    for a, b in zip(*results, strict=True):
        assert (a.cpu() - b).norm() / b.norm() < 1e-5  # float32 sums in other orders (atomic adds on CUDA)
    index = index.cuda()
    values = torch.randn(20_000, 128)
    top = neighbour_max(values.cuda(), index, max_rows=4096)
    torch.testing.assert_close(top.cpu(), neighbour_max(values, index.cpu(), max_rows=4096), rtol=0, atol=0)
