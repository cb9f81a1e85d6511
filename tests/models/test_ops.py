"""kNN / FPS / gather / random sampling against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.ops import farthest_point_sample, gather, knn, random_sample


def _fps_reference(p: np.ndarray, m: int) -> list[int]:
    """Farthest point sampling with plain loops, started at the point farthest from the mean."""
    centre = p.mean(axis=0)
    chosen = [int(np.argmax(((p - centre) ** 2).sum(1)))]
    dist = np.full(len(p), np.inf)
    for _ in range(m - 1):
        dist = np.minimum(dist, ((p - p[chosen[-1]]) ** 2).sum(1))
        chosen.append(int(np.argmax(dist)))
    return chosen


def test_fps_matches_loop_reference() -> None:
    pos = torch.rand(3, 60, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    idx = farthest_point_sample(pos, 12)
    assert idx.shape == (3, 12) and idx.dtype == torch.long
    for b in range(3):
        assert idx[b].tolist() == _fps_reference(pos[b].numpy(), 12)
        assert len(set(idx[b].tolist())) == 12


def test_fps_is_independent_of_point_order() -> None:
    g = torch.Generator().manual_seed(2)
    pos = torch.rand(1, 40, 3, generator=g)
    perm = torch.randperm(40, generator=g)
    a = gather(pos, farthest_point_sample(pos, 10))
    b = gather(pos[:, perm], farthest_point_sample(pos[:, perm], 10))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("b", "n", "m"), [(1, 1, 1), (3, 100, 1), (2, 257, 100), (4, 1024, 512), (2, 300, 300)])
def test_fast_fps_operator_equals_the_reference(b: int, n: int, m: int) -> None:
    """method="auto" (the custom operator: torch_quickfps on the CPU) returns the reference loop's indices."""
    pos = torch.randn(b, n, 3, generator=torch.Generator().manual_seed(n))
    assert torch.equal(farthest_point_sample(pos, m), farthest_point_sample(pos, m, method="exact"))


def test_fast_fps_of_bf16_clouds_works_in_float32() -> None:
    """bf16 coordinates: the start and the distances in float32, as the reference on the same values upcast (a
    cloud whose bf16 distances have no exact ties among the picks)."""
    half = torch.randn(2, 257, 3, generator=torch.Generator().manual_seed(257)).bfloat16()
    assert torch.equal(farthest_point_sample(half, 100), farthest_point_sample(half.float(), 100, method="exact"))


def test_fast_fps_is_one_node_under_compile() -> None:
    pos = torch.randn(2, 200, 3, generator=torch.Generator().manual_seed(7))
    graphs = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    sample = torch.compile(lambda p: farthest_point_sample(p, 50, validate=False), backend=backend, fullgraph=True)
    assert torch.equal(sample(pos), farthest_point_sample(pos, 50, method="exact"))
    calls = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert calls == [torch.ops.centroid.farthest_point_sample]  # the operator, nothing around it


def test_knn_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    query, points = torch.rand(2, 30, 3, generator=g), torch.rand(2, 50, 3, generator=g)
    idx = knn(query, points, 7)
    assert idx.shape == (2, 30, 7) and idx.dtype == torch.long
    q, p = query.double().numpy(), points.double().numpy()
    for b in range(2):
        d = ((q[b][:, None] - p[b][None]) ** 2).sum(-1)  # (30, 50)
        ref = np.argsort(d, axis=1, kind="stable")[:, :7]
        got_d = np.take_along_axis(d, idx[b].numpy(), axis=1)
        ref_d = np.take_along_axis(d, ref, axis=1)
        np.testing.assert_allclose(got_d, ref_d, rtol=1e-5, atol=1e-6)  # same distances, nearest first
        assert (idx[b].numpy() == ref).mean() > 0.99  # identical indices barring float near-ties


def test_knn_chunked_equals_unchunked() -> None:
    g = torch.Generator().manual_seed(4)
    query, points = torch.rand(2, 101, 3, generator=g), torch.rand(2, 80, 3, generator=g)
    assert torch.equal(knn(query, points, 5, chunk_size=3), knn(query, points, 5, chunk_size=100_000))


def test_knn_with_k_equal_n_returns_every_point() -> None:
    pos = torch.rand(2, 9, 3)
    idx = knn(pos, pos, 9)
    assert torch.equal(idx.sort(-1).values, torch.arange(9).expand(2, 9, 9))
    assert torch.equal(idx[..., 0], torch.arange(9).expand(2, 9))  # each point is its own nearest


def test_gather_shapes_and_values() -> None:
    x = torch.arange(2 * 5 * 3.0).view(2, 5, 3)
    idx = torch.tensor([[[0, 4], [1, 1]], [[3, 2], [0, 0]]])
    out = gather(x, idx)
    assert out.shape == (2, 2, 2, 3)
    assert torch.equal(out[1, 0, 0], x[1, 3]) and torch.equal(out[0, 0, 1], x[0, 4])


def test_random_sample_is_distinct_and_seeded() -> None:
    pos = torch.rand(2, 20, 3)
    a = random_sample(pos, 20, generator=torch.Generator().manual_seed(0))
    b = random_sample(pos, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.equal(a.sort(-1).values, torch.arange(20).expand(2, 20))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: knn(torch.rand(1, 4, 3), torch.rand(1, 4, 3), 5), "k=5"),
        (lambda: farthest_point_sample(torch.rand(1, 4, 3), 5), "m=5"),
        (lambda: random_sample(torch.rand(1, 4, 3), 5), "m=5"),
        (lambda: farthest_point_sample(torch.tensor([[[0.0, float("nan"), 0.0]]]), 1), "NaN"),
        (lambda: knn(torch.rand(4, 3), torch.rand(1, 4, 3), 1), r"\[B, N, 3\]"),
        (lambda: knn(torch.rand(2, 4, 3), torch.rand(1, 4, 3), 1), "batch sizes"),
    ],
)
def test_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_fps_operator_on_cuda_equals_the_reference() -> None:
    """On CUDA the operator runs the Triton kernel (models/triton_fps.py): the reference's indices."""
    pos = torch.randn(8, 2048, 3, generator=torch.Generator().manual_seed(11))
    assert torch.equal(farthest_point_sample(pos.cuda(), 1024).cpu(), farthest_point_sample(pos, 1024, method="exact"))
