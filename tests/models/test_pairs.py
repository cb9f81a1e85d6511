"""The per-pair entry points of ``models.pairs``, every kernel against the formulas (float64) and ``gradcheck``;
Triton through its interpreter without CUDA (``tests/conftest.py``)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from models.ops import TRITON
from models.pairs import (
    KERNELS,
    PairIndex,
    choose_kernel,
    chunk_rows,
    knn_batchnorm_max_pool,
    knn_max_pool,
    local_attention,
    neighbour_max,
)
from models.pairs.chunked import chunked_knn_max_pool
from models.pairs.csr import Pattern
from models.pairs.operators import fused_attention, fused_neighbour_max

R, S, K, H, D, E = 11, 20, 5, 2, 3, 4
_TRITON = pytest.param("triton", marks=pytest.mark.skipif(not TRITON, reason="Triton is not installed"))
#: The kernels of each entry point (an explicit kernel an operation lacks runs as "chunked": not repeated here).
ATTENTION = ["gathered", "chunked", "csr", _TRITON]
MAXIMUM = ["gathered", "chunked", _TRITON]
ONE_WINNER = ["chunked", _TRITON]  # the kernels that route a maximum's gradient to one winner


def _attention_inputs(seed: int, rel: bool = True, sizes: tuple[int, ...] = (R, S, K, H, D, E),
                      dtype: torch.dtype = torch.float64) -> tuple[list[torch.Tensor], torch.Tensor]:
    """q, key, value (and rel, w2, b2), leaves of ``dtype``, and the index ``[R, K]``."""
    R_, S_, K_, H_, D_, E_ = sizes
    g = torch.Generator().manual_seed(seed)
    shapes = [(R_, H_, D_), (S_, H_, D_), (S_, H_, D_)] + ([(R_, K_, E_), (H_, D_, E_), (H_, D_)] if rel else [])
    tensors = [torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for shape in shapes]
    return tensors, torch.randint(0, S_, (R_, K_), generator=g)


def _attention_formula(q, key, value, index, scale, rel=None, w2=None, b2=None):
    """As the paper reads: δ = W_2 r + b_2 built per pair and added to the gathered keys and values."""
    k, v = key[index], value[index]  # (R, K, H, D)
    if rel is not None:
        delta = torch.einsum("rke,hde->rkhd", rel, w2) + b2
        k, v = k + delta, v + delta
    a = ((k * q.unsqueeze(1)).sum(-1) * scale).softmax(dim=1)  # (R, K, H)
    return (v * a.unsqueeze(-1)).sum(1), a


@pytest.mark.parametrize("kernel", ATTENTION)
@pytest.mark.parametrize("rel", [True, False])
@pytest.mark.parametrize("max_rows", [1, 4, None])
def test_local_attention_equals_its_formula(kernel: str, rel: bool, max_rows: int | None) -> None:
    tensors, index = _attention_inputs(0, rel)
    index[0, 1] = index[0, 0]  # a repeated neighbour
    got = local_attention(*tensors[:3], index, 0.7, *tensors[3:], kernel=kernel, max_rows=max_rows)
    want = _attention_formula(*tensors[:3], index, 0.7, *tensors[3:])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g_out = torch.linspace(-1, 1, got[0].numel(), dtype=torch.float64).view_as(got[0])
    grads = torch.autograd.grad(got[0], tensors, g_out)
    for a, b in zip(grads, torch.autograd.grad(want[0], tensors, g_out), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", ATTENTION)
def test_local_attention_passes_gradcheck(kernel: str) -> None:
    tensors, index = _attention_inputs(1)
    attend = lambda *t: local_attention(*t[:3], index, 0.5, *t[3:], kernel=kernel, max_rows=3)[0]  # noqa: E731 -- a one-line shorthand
    assert torch.autograd.gradcheck(attend, tensors, fast_mode=True)


def test_local_attention_needs_the_whole_position_code() -> None:
    tensors, index = _attention_inputs(2)
    with pytest.raises(ValueError, match="all three or none"):
        local_attention(*tensors[:3], index, 1.0, tensors[3], tensors[4])


def test_a_kept_pair_index_serves_every_call_with_one_pattern() -> None:
    """The T steps of a stage share their index: the CSR pattern is built once, and the results are the same."""
    tensors, index = _attention_inputs(15)
    pairs = PairIndex(index, S)
    first = local_attention(*tensors[:3], pairs, 0.5, *tensors[3:], kernel="csr")
    pattern = pairs.pattern(H)
    second = local_attention(*tensors[:3], pairs, 0.5, *tensors[3:], kernel="csr")
    assert pairs.pattern(H) is pattern
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", ATTENTION)
def test_local_attention_runs_under_bf16_autocast_on_cpu(kernel: str) -> None:
    """Every input in bf16: results within bf16 rounding of the float64 formula, bf16 gradients."""
    tensors, index = _attention_inputs(3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = local_attention(*tensors[:3], index, 0.5, *tensors[3:], kernel=kernel)
    wide = [t.detach().double() for t in tensors]
    for a, b in zip(got, _attention_formula(*wide[:3], index, 0.5, *wide[3:]), strict=True):
        assert a.dtype == torch.bfloat16 and ((a.double() - b).norm() / b.norm()).item() < 2e-2
    got[0].float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in tensors)


def _pool_formula(source, offsets, w_pos, norm, index):
    z = source[index] + offsets @ w_pos.t()  # (R, K, C)
    return norm(z).amax(dim=1)


@pytest.mark.parametrize("kernel", ["gathered", "chunked"])
def test_knn_max_pool_equals_its_formula_and_passes_gradcheck(kernel: str) -> None:
    g = torch.Generator().manual_seed(4)
    C = 6
    source = torch.randn(S, C, generator=g, dtype=torch.float64, requires_grad=True)
    offsets = torch.randn(R, K, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w_pos = torch.randn(C, 3, generator=g, dtype=torch.float64, requires_grad=True)
    norm = torch.nn.LayerNorm(C).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(C, generator=g))
        norm.bias.copy_(torch.randn(C, generator=g))
    index = torch.randint(0, S, (R, K), generator=g)
    got = knn_max_pool(source, offsets, w_pos, norm, index, kernel=kernel, max_rows=3)
    want = _pool_formula(source, offsets, w_pos, norm, index)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inputs = (source, offsets, w_pos, norm.weight, norm.bias)
    grads = torch.autograd.grad((got * got.detach().sign()).sum(), inputs)
    want_grads = torch.autograd.grad((want * want.detach().sign()).sum(), inputs)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    pool = lambda s, o, w: knn_max_pool(s, o, w, norm, index, kernel=kernel, max_rows=4)  # noqa: E731 -- a one-line shorthand
    assert torch.autograd.gradcheck(pool, (source, offsets, w_pos), fast_mode=True)


def _batchnorm_pool_formula(source, points, centres, w_pos, norm, index):
    """``max_k BN(z)`` with the R·K pairs built: z_rk = source_j + W_p (p_j − p_r), ``[R, C]``."""
    pairs = source[index] + (points[index] - centres.unsqueeze(1)) @ w_pos.t()  # (R, K, C)
    return norm(pairs.view(-1, pairs.shape[-1])).view(pairs.shape).amax(dim=1)


def test_knn_max_pool_backward_survives_an_ulp_between_forward_and_recomputation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Backward recomputes the pairs' LayerNorm; where it differs from the forward's by an ulp (another kernel or
    thread count) the winners are still found: the same gradients, no NaN (no pair matched the forward's max
    before: 0 / 0)."""
    g = torch.Generator().manual_seed(14)
    C = 6
    source, offsets = torch.randn(S, C, generator=g, requires_grad=True), torch.randn(R, K, 3, generator=g)
    w_pos, norm, index = torch.randn(C, 3, generator=g), torch.nn.LayerNorm(C), torch.randint(0, S, (R, K), generator=g)
    (want,) = torch.autograd.grad(knn_max_pool(source, offsets, w_pos, norm, index, kernel="chunked", max_rows=4).sum(),
                                  source)
    layer_norm = torch.nn.functional.layer_norm
    monkeypatch.setattr(torch.nn.functional, "layer_norm",
                        lambda *a, **kw: torch.nextafter(layer_norm(*a, **kw), torch.tensor(float("inf"))))
    (got,) = torch.autograd.grad(knn_max_pool(source, offsets, w_pos, norm, index, kernel="chunked", max_rows=4).sum(),
                                 source)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", MAXIMUM)
@pytest.mark.parametrize("training", [True, False])
def test_knn_batchnorm_max_pool_equals_its_formula(training: bool, kernel: str) -> None:
    """BatchNorm over the R·K pairs: forward, every gradient and the running statistics as nn.BatchNorm1d."""
    g = torch.Generator().manual_seed(5)
    C = 6

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    source, points, centres, w_pos = rand(S, C), rand(S, 3), rand(R, 3), rand(C, 3)
    norms = [torch.nn.BatchNorm1d(C).double().train(training) for _ in range(2)]
    for norm in norms:
        with torch.no_grad():
            norm.weight.copy_(torch.linspace(-1.5, 2.0, C))  # negative gains pool the minimum
            norm.bias.copy_(torch.linspace(-0.5, 0.5, C))
            norm.running_mean.copy_(torch.linspace(-0.2, 0.3, C))
            norm.running_var.copy_(torch.linspace(0.5, 2.0, C))
    index = torch.randint(0, S, (R, K), generator=g)  # repeated neighbours in a row included
    got = knn_batchnorm_max_pool(source, points, centres, w_pos, norms[0], index, kernel=kernel, max_rows=3)
    want = _batchnorm_pool_formula(source, points, centres, w_pos, norms[1], index)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(norms[0].buffers(), norms[1].buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    weights = torch.randn(R, C, generator=g, dtype=torch.float64)
    inputs = [source, points, centres, w_pos]
    grads = torch.autograd.grad((got * weights).sum(), inputs + list(norms[0].parameters()))
    want_grads = torch.autograd.grad((want * weights).sum(), inputs + list(norms[1].parameters()))
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if training:
        pool = lambda *t: knn_batchnorm_max_pool(*t, norms[0], index, kernel=kernel, max_rows=4)  # noqa: E731 -- a one-line shorthand
        assert torch.autograd.gradcheck(pool, inputs, fast_mode=True)


@pytest.mark.parametrize("kernel", MAXIMUM)
@pytest.mark.parametrize("max_rows", [1, 4, None])
def test_neighbour_max_equals_amax(kernel: str, max_rows: int | None) -> None:
    """Forward as ``torch.amax`` of the gathered rows, with and without gradients recorded."""
    g = torch.Generator().manual_seed(16)
    values, index = torch.randn(S, 7, generator=g, dtype=torch.float64), torch.randint(0, S, (R, K), generator=g)
    want = values[index].amax(dim=1)
    torch.testing.assert_close(neighbour_max(values.requires_grad_(), index, kernel=kernel, max_rows=max_rows), want,
                               rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(neighbour_max(values, index, kernel=kernel, max_rows=max_rows), want, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", ONE_WINNER)
@pytest.mark.parametrize("max_rows", [1, 4, None])
def test_neighbour_max_routes_each_gradient_to_one_winner(kernel: str, max_rows: int | None) -> None:
    g = torch.Generator().manual_seed(6)
    values = torch.randn(S, 7, generator=g, dtype=torch.float64)
    values[3] = values[4]  # two inputs tie on every channel
    index = torch.randint(0, S, (R, K), generator=g)
    index[0, :2] = torch.tensor([3, 4])
    values.requires_grad_()
    got = neighbour_max(values, index, kernel=kernel, max_rows=max_rows)
    torch.testing.assert_close(got, values[index].amax(dim=1), rtol=0, atol=0)
    weights = torch.randn(R, 7, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((got * weights).sum(), values)
    want = torch.zeros_like(values)
    for r in range(R):
        for c in range(7):  # the winner: the last neighbour reaching the max
            k = max(k for k in range(K) if values[index[r, k], c] == got[r, c])
            want[index[r, k], c] += weights[r, c]
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-15)


def non_finite_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """values ``[S, 3]`` float64 where row 0's neighbours are all −inf on channel 0, row 1 holds a NaN on channel
    1 and +inf on channel 2; index ``[R, K]`` (K = 5: Triton pads to 8 lanes); the gradient each input gets from
    ``top.sum()``: one per row and channel, at the last k reaching the max (k = 0 for a NaN max)."""
    g = torch.Generator().manual_seed(13)
    values, index = torch.randn(S, 3, generator=g, dtype=torch.float64), torch.randint(0, S, (R, K), generator=g)
    index[0], index[1] = torch.arange(0, K), torch.arange(K, 2 * K)
    values[:K, 0] = float("-inf")
    values[K + 2, 1], values[K + 3, 2] = float("nan"), float("inf")
    want = torch.zeros_like(values)
    for r in range(R):
        for c in range(3):
            top = values[index[r], c].amax()
            k = max([k for k in range(K) if values[index[r, k], c] == top], default=0)
            want[index[r, k], c] += 1
    return values, index, want


@pytest.mark.parametrize("kernel", ONE_WINNER)
@pytest.mark.parametrize("max_rows", [1, 4, None])
def test_neighbour_max_of_non_finite_rows(kernel: str, max_rows: int | None) -> None:
    """−inf, +inf and NaN rows: NaN propagates as torch.amax does, every winner is a neighbour (a row of −inf gave
    k = −1 before: an index error in backward)."""
    values, index, want = non_finite_rows()
    leaf = values.clone().requires_grad_()
    top = neighbour_max(leaf, index, kernel=kernel, max_rows=max_rows)
    torch.testing.assert_close(top, values[index].amax(dim=1), rtol=0, atol=0, equal_nan=True)
    (grad,) = torch.autograd.grad(top.sum(), leaf)
    torch.testing.assert_close(grad, want, rtol=0, atol=0)


@pytest.mark.parametrize("kernel", MAXIMUM)
def test_knn_batchnorm_max_pool_runs_under_bf16_autocast_on_cpu(kernel: str) -> None:
    g = torch.Generator().manual_seed(7)
    source = torch.randn(S, 8, generator=g).to(torch.bfloat16).requires_grad_()
    points, centres, norm = torch.randn(S, 3, generator=g), torch.randn(R, 3, generator=g), torch.nn.BatchNorm1d(8)
    index = torch.randint(0, S, (R, K), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w_pos = torch.randn(8, 3, generator=g)
        out = knn_batchnorm_max_pool(source, points, centres, w_pos, norm, index, kernel=kernel)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()  # statistics over every pair in float32
    out.sum().backward()
    assert source.grad is not None and source.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("translation", [0.0, 10.0, 100.0, 1000.0])
def test_knn_batchnorm_max_pool_keeps_its_digits_for_clouds_far_from_the_origin(translation: float) -> None:
    """float32, a cloud moved away from the origin: output and running statistics stay within 1e-4 (relative
    norm) of nn.BatchNorm1d on the built pairs (the sums of b and c cancelled before: 17.6 at a translation of
    100, 141 at 1000)."""
    g = torch.Generator().manual_seed(11)
    C = 16
    source, w_pos = torch.randn(S, C, generator=g), torch.randn(C, 3, generator=g)
    points = torch.rand(S, 3, generator=g) + translation
    centres, index = points[:R], torch.randint(0, S, (R, K), generator=g)
    norms = [torch.nn.BatchNorm1d(C) for _ in range(2)]
    got = knn_batchnorm_max_pool(source, points, centres, w_pos, norms[0], index)
    want = _batchnorm_pool_formula(source, points, centres, w_pos, norms[1], index)
    for a, b in [(got, want), *zip(norms[0].buffers(), norms[1].buffers())]:
        assert ((a - b).float().norm() / b.float().norm()).item() <= 1e-4


#: Two clouds of different sizes (inputs, rows), one per process in the distributed test.
CLOUDS = [(20, 11), (14, 7)]


def _two_clouds() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """source, points, centres of both clouds concatenated (float64), w_pos, and index ``[R, K]`` into the inputs."""
    g = torch.Generator().manual_seed(12)
    C, (S0, R0), (S1, R1) = 6, *CLOUDS
    source, points = (torch.randn(S0 + S1, n, generator=g, dtype=torch.float64) for n in (C, 3))
    centres = torch.cat([points[:R0], points[S0 : S0 + R1]])
    index = torch.cat([torch.randint(0, S0, (R0, K), generator=g), torch.randint(S0, S0 + S1, (R1, K), generator=g)])
    return [source, points, centres], torch.randn(C, 3, generator=g, dtype=torch.float64), index


def _sync_norm(C: int) -> torch.nn.SyncBatchNorm:
    norm = torch.nn.SyncBatchNorm(C, momentum=0.3).double()
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-1.5, 2.0, C))  # negative gains pool the minimum
    return norm


def _sync_worker(rank: int, world: int, folder: str) -> None:
    """One process of the distributed test: its own cloud, a SyncBatchNorm; saves output, buffers, gradients."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        (source, points, centres), w_pos, index = _two_clouds()
        (S0, R0), (S, R) = CLOUDS[0], CLOUDS[rank]
        inputs, rows = slice(rank * S0, rank * S0 + S), slice(rank * R0, rank * R0 + R)
        mine = [source[inputs].requires_grad_(), points[inputs], centres[rows], w_pos.requires_grad_()]
        norm = _sync_norm(source.shape[1])
        out = knn_batchnorm_max_pool(*mine, norm, index[rows] - rank * S0)
        grads = torch.autograd.grad(out.square().sum(), [mine[0], mine[3], norm.weight])
        torch.save([out.detach(), *norm.buffers(), *grads], f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sync_batchnorm_over_two_processes_equals_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    """2 gloo processes, one cloud each: the statistics are all-reduced sums over the pairs of both, so the pooled
    output, the running statistics and the gradients (summed over the processes for the shared parameters) are
    those of one process on the concatenated batch, float64."""
    torch.multiprocessing.spawn(_sync_worker, args=(2, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    (source, points, centres), w_pos, index = _two_clouds()
    source.requires_grad_(), w_pos.requires_grad_()
    norm = _sync_norm(source.shape[1])  # one process, no group: a BatchNorm over every pair
    out = _batchnorm_pool_formula(source, points, centres, w_pos, norm, index)
    g_source, g_w_pos, g_weight = torch.autograd.grad(out.square().sum(), [source, w_pos, norm.weight])
    torch.testing.assert_close(torch.cat([ranks[0][0], ranks[1][0]]), out.detach(), rtol=1e-12, atol=1e-12)
    for r in range(2):
        for a, b in zip(ranks[r][1:4], norm.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([ranks[0][4], ranks[1][4]]), g_source, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ranks[0][5] + ranks[1][5], g_w_pos, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ranks[0][6] + ranks[1][6], g_weight, rtol=1e-10, atol=1e-12)


@pytest.fixture
def deterministic() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True)`` (Lightning's ``deterministic: true``) for one test."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_deterministic_algorithms_take_the_chunked_path(deterministic: None) -> None:
    """Under deterministic algorithms CUDA takes the chunked functions (torch's deterministic scatter adds), not the
    Triton kernels, whose backward adds with atomics in no fixed order (they were used, silently, before); the
    chunked backward runs without a warning."""
    assert choose_kernel("auto", torch.device("cuda"), "max") == "chunked"
    assert choose_kernel("auto", torch.device("cuda"), "attention") == "chunked"
    values, index, _ = non_finite_rows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neighbour_max(values.nan_to_num().requires_grad_(), index).sum().backward()


def test_neighbourhood_pattern_and_its_transpose_hold_the_pairs() -> None:
    g = torch.Generator().manual_seed(8)
    index = torch.randint(0, S, (R, K), generator=g)
    index[0, 1] = index[0, 0]  # repeated neighbours add up
    values = torch.randn(R, H, K, generator=g, dtype=torch.float64)
    dense = torch.zeros(R * H, S * H, dtype=torch.float64)
    for r in range(R):
        for c in range(H):
            for k in range(K):
                dense[r * H + c, index[r, k] * H + c] += values[r, c, k]
    pattern = Pattern(index, S, H)
    torch.testing.assert_close(pattern.matrix(values).to_dense(), dense, rtol=0, atol=0)
    torch.testing.assert_close(pattern.transposed(values).to_dense(), dense.t(), rtol=0, atol=0)


def test_chunk_rows_is_cache_sized_on_cpu_and_bounded_by_max_rows() -> None:
    cpu = torch.device("cpu")
    assert chunk_rows(10, 16 * 128, cpu, None) == 10  # fewer rows than a chunk
    assert chunk_rows(10**6, 16 * 128, cpu, None) == 256  # 2^19 elements / (K·C)
    assert chunk_rows(10**6, 10**9, cpu, None) == 16  # never fewer than 16 rows
    assert chunk_rows(10**6, 16, cpu, 100) == 100  # max_rows bounds every device
    assert chunk_rows(10**6, 16, torch.device("meta"), None) == 10**6  # accelerators: one launch where allowed


def test_chunked_backwards_take_gradients_in_another_dtype() -> None:
    """A compiled graph (seen with ``torch.compile`` on CUDA under bf16 autocast) can hand a function's backward
    float32 gradients for bfloat16 outputs; each chunked backward casts them to its forward's dtype and gives
    what autograd gives with the gradients in that dtype."""
    g = torch.Generator().manual_seed(9)

    def bf16(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).bfloat16().requires_grad_()

    def f32(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    index = torch.randint(0, S, (R, K), generator=g)
    norm = torch.nn.LayerNorm(6).bfloat16()
    q, key, value, q_rel, rel = bf16(R, H, D), bf16(S, H, D), bf16(S, H, D), bf16(R, E, H), bf16(R, K, E)
    source, offsets, w_pos, values = bf16(S, 6), bf16(R, K, 3), bf16(6, 3), bf16(S, 6)
    calls = [  # outputs, the float32 gradients of every output, the inputs in the function's own order
        (fused_attention(q, key, value, index, 0.5, 4, q_rel, rel), [f32(R, H, D), f32(R, H, E), None],
         [q, q_rel, key, value, rel]),
        ((chunked_knn_max_pool(source, offsets, w_pos, norm, index, 4),), [f32(R, 6)], [source, offsets, w_pos]),
        ((fused_neighbour_max(values, index, 4),), [f32(R, 6), None], [values]),  # second output: the winners
    ]
    for outputs, grads, inputs in calls:
        used = [(o, gr.bfloat16()) for o, gr in zip(outputs, grads) if gr is not None]
        eager = torch.autograd.grad([o for o, _ in used], inputs, [gr for _, gr in used], retain_graph=True)
        with torch.no_grad():  # the backward, called as a compiled graph calls it
            direct = outputs[0].grad_fn.apply(*grads)
        for a, b in zip(direct, eager):
            assert a.dtype == torch.bfloat16
            torch.testing.assert_close(a, b)


def test_choose_kernel_decides_auto_from_the_device_dropout_and_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    operations = ("attention", "max", "layer_norm_max")
    assert [choose_kernel("auto", cpu, op) for op in operations] == ["csr", "chunked", "chunked"]
    assert choose_kernel("auto", cuda, "attention") == ("triton" if TRITON else "chunked")
    asked = [k for k in KERNELS if k != "triton" or TRITON]
    assert all(choose_kernel(k, cpu, "attention", dropout=0.1) == "gathered" for k in asked)
    assert choose_kernel("csr", cpu, "max") == choose_kernel("csr", cpu, "layer_norm_max") == "chunked"
    assert choose_kernel("gathered", cuda, "max") == "gathered"
    with pytest.raises(ValueError, match="unknown per-pair kernel 'dense'"):
        choose_kernel("dense", cpu)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert choose_kernel("auto", cpu, "attention") == "chunked"  # compiled graphs hold no sparse tensors
    with pytest.raises(ValueError, match="torch.compile"):
        choose_kernel("csr", cpu, "attention")


def test_the_gathered_kernels_export_as_plain_torch_operators() -> None:
    """``torch.export`` traces the gathered kernels into aten operators only: no ``centroid::`` custom operator."""

    class Pairs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(D).eval()

        def forward(self, q, key, value, rel, w2, b2, index, points):
            out, _ = local_attention(q, key, value, index, 0.5, rel, w2, b2, kernel="gathered")
            pooled = knn_batchnorm_max_pool(key[:, 0], points, points[:R], w2[0, :, :3], self.norm, index,
                                            kernel="gathered")
            return out, pooled

    tensors, index = _attention_inputs(17)
    inputs = (*(t.detach() for t in tensors), index, torch.randn(S, 3, dtype=torch.float64))
    graph = torch.export.export(Pairs().double(), inputs).graph_module.code
    assert "centroid" not in graph and "aten.index_select" in graph
