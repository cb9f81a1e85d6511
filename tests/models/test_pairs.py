"""The per-pair functions (chunked, and sparse CSR products) against their autograd formulas (float64) and
``gradcheck``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from models.csr import Pattern, csr_local_attention
from models.pairs import chunk_rows, knn_batchnorm_max_pool, knn_max_pool, local_attention, neighbour_max, use_triton

R, S, K, H, D, E = 11, 20, 5, 2, 3, 4


def _attention_inputs(seed: int, rel: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    tensors = [rand(R, H, D), rand(S, H, D), rand(S, H, D)] + ([rand(R, E, H), rand(R, K, E)] if rel else [])
    return tensors, torch.randint(0, S, (R, K), generator=g)


def _attention_formula(q, key, value, index, scale, q_rel=None, rel=None):  # noqa: ANN001, ANN202
    logits = (key[index] * q.unsqueeze(1)).sum(-1)  # (R, K, H)
    if rel is not None:
        logits = logits + rel @ q_rel
    a = (logits * scale).softmax(dim=1)
    out = (value[index] * a.unsqueeze(-1)).sum(1)
    return out, None if rel is None else a.transpose(1, 2) @ rel, a


def _csr_attention(q, key, value, index, scale, _chunk, q_rel=None, rel=None):  # noqa: ANN001, ANN202
    """:func:`csr_local_attention` with the call of :func:`local_attention` (the chunk is not used)."""
    return csr_local_attention(q, key, value, Pattern(index, key.shape[0], q.shape[1]), scale, q_rel, rel)


KERNELS = {"chunked": local_attention, "csr": _csr_attention}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rel", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, R])
def test_local_attention_equals_its_formula(kernel: str, rel: bool, chunk: int) -> None:
    tensors, index = _attention_inputs(0, rel)
    index[0, 1] = index[0, 0]  # a repeated neighbour
    got = KERNELS[kernel](*tensors[:3], index, 0.7, chunk, *tensors[3:])
    want = _attention_formula(*tensors[:3], index, 0.7, *tensors[3:])
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    loss = lambda outs: sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum()  # noqa: E731
                            for o in outs[:2] if o is not None)  # fmt: skip
    grads = torch.autograd.grad(loss(got), tensors)
    want_grads = torch.autograd.grad(loss(want), tensors)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", KERNELS)
def test_local_attention_passes_gradcheck(kernel: str) -> None:
    tensors, index = _attention_inputs(1)
    q, key, value, q_rel, rel = tensors
    attention = KERNELS[kernel]
    assert torch.autograd.gradcheck(lambda *t: attention(t[0], t[1], t[2], index, 0.5, 3, t[3], t[4])[:2],
                                    (q, key, value, q_rel, rel), fast_mode=True)  # fmt: skip


@pytest.mark.parametrize("kernel", KERNELS)
def test_local_attention_needs_both_position_terms(kernel: str) -> None:
    tensors, index = _attention_inputs(2)
    with pytest.raises(ValueError, match="both or neither"):
        KERNELS[kernel](*tensors[:3], index, 1.0, 4, q_rel=tensors[3])


@pytest.mark.parametrize("kernel", KERNELS)
def test_local_attention_runs_under_bf16_autocast_on_cpu(kernel: str) -> None:
    """Every input in bf16 (the position terms too: in float32 they promoted the whole call to float32, and the
    test ran no bf16 at all): bf16 results within bf16 rounding of the float64 formula, bf16 gradients."""
    tensors, index = _attention_inputs(3)
    half = [t.detach().to(torch.bfloat16).requires_grad_() for t in tensors]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = KERNELS[kernel](*half[:3], index, 0.5, 4, *half[3:])
    wide = [t.detach().double() for t in half]
    want = _attention_formula(*wide[:3], index, 0.5, *wide[3:])
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.bfloat16 and ((a.double() - b).norm() / b.norm()).item() < 2e-2
    (got[0].float().sum() + got[1].float().sum()).backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in half)


def _pool_formula(source, offsets, w_pos, norm, index):  # noqa: ANN001, ANN202
    z = source[index] + offsets @ w_pos.t()  # (R, K, C)
    return norm(z).amax(dim=1)


def test_knn_max_pool_equals_its_formula_and_passes_gradcheck() -> None:
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
    got, want = knn_max_pool(source, offsets, w_pos, norm, index, 3), _pool_formula(source, offsets, w_pos, norm, index)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inputs = (source, offsets, w_pos, norm.weight, norm.bias)
    grads = torch.autograd.grad((got * got.detach().sign()).sum(), inputs)
    want_grads = torch.autograd.grad((want * want.detach().sign()).sum(), inputs)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    assert torch.autograd.gradcheck(lambda s, o, w: knn_max_pool(s, o, w, norm, index, 4), (source, offsets, w_pos),
                                    fast_mode=True)


def _batchnorm_pool_formula(source, points, centres, w_pos, norm, index):  # noqa: ANN001, ANN202
    """``max_k BN(z)`` with the R·K pairs built: z_rk = source_j + W_p (p_j − p_r), ``[R, C]``."""
    pairs = source[index] + (points[index] - centres.unsqueeze(1)) @ w_pos.t()  # (R, K, C)
    return norm(pairs.view(-1, pairs.shape[-1])).view(pairs.shape).amax(dim=1)


def test_knn_max_pool_backward_survives_an_ulp_between_forward_and_recomputation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backward recomputes the pairs' LayerNorm; where it differs from the forward's by an ulp (another kernel or
    thread count) the winners are still found: the same gradients, no NaN (no pair matched the forward's max
    before: 0 / 0)."""
    g = torch.Generator().manual_seed(14)
    C = 6
    source, offsets = torch.randn(S, C, generator=g, requires_grad=True), torch.randn(R, K, 3, generator=g)
    w_pos, norm, index = torch.randn(C, 3, generator=g), torch.nn.LayerNorm(C), torch.randint(0, S, (R, K), generator=g)
    (want,) = torch.autograd.grad(knn_max_pool(source, offsets, w_pos, norm, index, 4).sum(), source)
    layer_norm = torch.nn.functional.layer_norm
    monkeypatch.setattr(torch.nn.functional, "layer_norm",
                        lambda *a, **kw: torch.nextafter(layer_norm(*a, **kw), torch.tensor(float("inf"))))  # fmt: skip
    (got,) = torch.autograd.grad(knn_max_pool(source, offsets, w_pos, norm, index, 4).sum(), source)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("training", [True, False])
def test_knn_batchnorm_max_pool_equals_its_formula(training: bool) -> None:
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
    got = knn_batchnorm_max_pool(source, points, centres, w_pos, norms[0], index, 3)
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
        assert torch.autograd.gradcheck(lambda *t: knn_batchnorm_max_pool(*t, norms[0], index, 4), inputs,
                                        fast_mode=True)  # fmt: skip


@pytest.mark.parametrize("chunk", [1, 4, R])
def test_neighbour_max_equals_amax_and_routes_each_gradient_to_one_winner(chunk: int) -> None:
    g = torch.Generator().manual_seed(6)
    values = torch.randn(S, 7, generator=g, dtype=torch.float64)
    values[3] = values[4]  # two inputs tie on every channel
    index = torch.randint(0, S, (R, K), generator=g)
    index[0, :2] = torch.tensor([3, 4])
    values.requires_grad_()
    got = neighbour_max(values, index, chunk)
    torch.testing.assert_close(got, values[index].amax(dim=1), rtol=0, atol=0)
    weights = torch.randn(R, 7, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((got * weights).sum(), values)
    want = torch.zeros_like(values)
    for r in range(R):
        for c in range(7):  # the winner: the last neighbour reaching the max
            k = max(k for k in range(K) if values[index[r, k], c] == got[r, c])
            want[index[r, k], c] += weights[r, c]
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-15)
    with torch.no_grad():  # no gradient: no winner kept
        torch.testing.assert_close(neighbour_max(values, index, chunk), got.detach())


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


@pytest.mark.parametrize("chunk", [1, 4, R])
def test_neighbour_max_of_non_finite_rows(chunk: int) -> None:
    """−inf, +inf and NaN rows: NaN propagates as torch.amax does, every winner is a neighbour (a row of −inf gave
    k = −1 before: an index error in backward)."""
    values, index, want = non_finite_rows()
    leaf = values.clone().requires_grad_()
    top = neighbour_max(leaf, index, chunk)
    torch.testing.assert_close(top, values[index].amax(dim=1), rtol=0, atol=0, equal_nan=True)
    (grad,) = torch.autograd.grad(top.sum(), leaf)
    torch.testing.assert_close(grad, want, rtol=0, atol=0)


def test_knn_batchnorm_max_pool_runs_under_bf16_autocast_on_cpu() -> None:
    g = torch.Generator().manual_seed(7)
    source = torch.randn(S, 8, generator=g).to(torch.bfloat16).requires_grad_()
    points, centres, norm = torch.randn(S, 3, generator=g), torch.randn(R, 3, generator=g), torch.nn.BatchNorm1d(8)
    index = torch.randint(0, S, (R, K), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = knn_batchnorm_max_pool(source, points, centres, torch.randn(8, 3, generator=g), norm, index, 4)
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
    got = knn_batchnorm_max_pool(source, points, centres, w_pos, norms[0], index, 4)
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
        out = knn_batchnorm_max_pool(*mine, norm, index[rows] - rank * S0, 4)
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
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def test_deterministic_algorithms_take_the_chunked_path(deterministic: None) -> None:
    """Under deterministic algorithms CUDA takes the chunked functions (torch's deterministic scatter adds), not the
    Triton kernels, whose backward adds with atomics in no fixed order (they were used, silently, before); the
    chunked backward runs without a warning."""
    assert not use_triton(torch.device("cuda"))
    values, index, _ = non_finite_rows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neighbour_max(values.nan_to_num().requires_grad_(), index, 4).sum().backward()


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
        (local_attention(q, key, value, index, 0.5, 4, q_rel, rel), [f32(R, H, D), f32(R, H, E), None], [q, q_rel, key, value, rel]),
        ((knn_max_pool(source, offsets, w_pos, norm, index, 4),), [f32(R, 6)], [source, offsets, w_pos]),
        ((neighbour_max(values, index, 4),), [f32(R, 6), None], [values]),  # the operator's second output: the winners
    ]  # fmt: skip
    for outputs, grads, inputs in calls:
        used = [(o, gr.bfloat16()) for o, gr in zip(outputs, grads) if gr is not None]
        eager = torch.autograd.grad([o for o, _ in used], inputs, [gr for _, gr in used], retain_graph=True)
        with torch.no_grad():  # the backward, called as a compiled graph calls it
            direct = outputs[0].grad_fn.apply(*grads)
        for a, b in zip(direct, eager):
            assert a.dtype == torch.bfloat16
            torch.testing.assert_close(a, b)
