"""The chunked per-pair functions against their autograd formulas (float64) and ``gradcheck``."""

from __future__ import annotations

import pytest
import torch

from models.pairs import chunk_rows, knn_max_pool, local_attention

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


@pytest.mark.parametrize("rel", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, R])
def test_local_attention_equals_its_formula(rel: bool, chunk: int) -> None:
    tensors, index = _attention_inputs(0, rel)
    got = local_attention(*tensors[:3], index, 0.7, chunk, *tensors[3:])
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


def test_local_attention_passes_gradcheck() -> None:
    tensors, index = _attention_inputs(1)
    q, key, value, q_rel, rel = tensors
    assert torch.autograd.gradcheck(lambda *t: local_attention(t[0], t[1], t[2], index, 0.5, 3, t[3], t[4])[:2],
                                    (q, key, value, q_rel, rel), fast_mode=True)  # fmt: skip


def test_local_attention_needs_both_position_terms() -> None:
    tensors, index = _attention_inputs(2)
    with pytest.raises(ValueError, match="both or neither"):
        local_attention(*tensors[:3], index, 1.0, 4, q_rel=tensors[3])


def test_local_attention_runs_under_bf16_autocast_on_cpu() -> None:
    tensors, index = _attention_inputs(3)
    half = [t.detach().to(torch.bfloat16).requires_grad_() for t in tensors[:3]] + [t.detach().float() for t in tensors[3:]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, mixed, weights = local_attention(*half[:3], index, 0.5, 4, *half[3:])
    assert out.dtype == torch.float32  # promoted to the widest input
    torch.testing.assert_close(weights.sum(1), torch.ones(R, H), rtol=1e-5, atol=1e-5)
    (out.sum() + mixed.sum()).backward()
    assert all(t.grad is not None and t.grad.dtype == t.dtype for t in half[:3])


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


@pytest.mark.parametrize("training", [True, False])
def test_knn_max_pool_with_batch_norm_equals_its_formula(training: bool) -> None:
    """BatchNorm over the R·K pairs: forward, every gradient and the running statistics as nn.BatchNorm1d."""
    g = torch.Generator().manual_seed(5)
    C = 6
    source = torch.randn(S, C, generator=g, dtype=torch.float64, requires_grad=True)
    offsets = torch.randn(R, K, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w_pos = torch.randn(C, 3, generator=g, dtype=torch.float64, requires_grad=True)
    norms = [torch.nn.BatchNorm1d(C).double().train(training) for _ in range(2)]
    for norm in norms:
        with torch.no_grad():
            norm.weight.copy_(torch.linspace(-1.5, 2.0, C))  # negative gains pool the minimum
            norm.bias.copy_(torch.linspace(-0.5, 0.5, C))
            norm.running_mean.copy_(torch.linspace(-0.2, 0.3, C))
            norm.running_var.copy_(torch.linspace(0.5, 2.0, C))
    index = torch.randint(0, S, (R, K), generator=g)
    got = knn_max_pool(source, offsets, w_pos, norms[0], index, 3)
    want = norms[1](source[index].add(offsets @ w_pos.t()).view(-1, C)).view(R, K, C).amax(dim=1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(norms[0].buffers(), norms[1].buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    weights = torch.randn(R, C, generator=g, dtype=torch.float64)
    inputs = [source, offsets, w_pos]
    grads = torch.autograd.grad((got * weights).sum(), inputs + list(norms[0].parameters()))
    want_grads = torch.autograd.grad((want * weights).sum(), inputs + list(norms[1].parameters()))
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if training:
        assert torch.autograd.gradcheck(lambda s, o, w: knn_max_pool(s, o, w, norms[0], index, 4), inputs,
                                        fast_mode=True)  # fmt: skip


def test_chunk_rows_is_cache_sized_on_cpu_and_bounded_by_max_rows() -> None:
    cpu = torch.device("cpu")
    assert chunk_rows(10, 16 * 128, cpu, None) == 10  # fewer rows than a chunk
    assert chunk_rows(10**6, 16 * 128, cpu, None) == 256  # 2^19 elements / (K·C)
    assert chunk_rows(10**6, 10**9, cpu, None) == 16  # never fewer than 16 rows
    assert chunk_rows(10**6, 16, cpu, 100) == 100  # max_rows bounds every device
    assert chunk_rows(10**6, 16, torch.device("meta"), None) == 10**6  # accelerators: one launch where allowed
