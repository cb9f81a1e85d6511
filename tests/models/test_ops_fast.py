"""Fast paths of ``models.ops`` against their references: grid kNN (exact) and bucket FPS (approximate)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.ops import GRID_KNN_MIN_POINTS, farthest_point_sample, gather, knn


def _ref_dist(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted k smallest squared distances in float64 (an exact reference, no cdist mm rounding)."""
    d = (query.double()[:, :, None] - points.double()[:, None]).pow(2).sum(-1)
    return d.topk(k, dim=-1, largest=False).values


def _dist_of(query: torch.Tensor, points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return (gather(points.double(), idx) - query.double()[:, :, None]).pow(2).sum(-1)


def _clouds(kind: str, B: int, N: int, g: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(B, N, 3, generator=g)
    if kind == "surface":  # thin anisotropic shell: very non-uniform in 3-D
        p = F.normalize(torch.randn(B, N, 3, generator=g), dim=-1)
        return p * torch.tensor([3.0, 1.0, 0.1]) + 1e-3 * torch.randn(B, N, 3, generator=g)
    if kind == "clusters":  # dense blobs plus sparse outliers, different scales per cloud
        c = torch.randn(B, 4, 3, generator=g) * 10
        p = c[:, torch.arange(N) % 4] + 0.05 * torch.randn(B, N, 3, generator=g)
        p[:, :20] = torch.randn(B, 20, 3, generator=g) * 30
        return p * torch.tensor([1.0, 100.0])[:B, None, None]
    if kind == "duplicates":  # every point 8 times
        return torch.rand(B, N // 8, 3, generator=g).repeat(1, 8, 1)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["uniform", "surface", "clusters", "duplicates"])
def test_grid_knn_is_exact(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    points = _clouds(kind, 2, GRID_KNN_MIN_POINTS + 904, g)  # large enough that "auto" takes the grid
    query = torch.cat([points[:, ::7], torch.randn(2, 30, 3, generator=g) * 50], dim=1)  # some far outside
    k = 16
    grid = knn(query, points, k, method="grid")
    assert grid.shape == (2, query.shape[1], k) and grid.dtype == torch.long
    assert torch.equal(grid, knn(query, points, k, method="auto"))
    ref = _ref_dist(query, points, k)
    assert torch.allclose(_dist_of(query, points, grid), ref, rtol=1e-6, atol=1e-12)  # nearest first, exact
    # identical neighbour sets wherever the k-th and (k+1)-th distances are not tied
    ref1 = _ref_dist(query, points, k + 1)
    untied = (ref1[..., k] - ref1[..., k - 1]) > 1e-6 * ref1[..., k].clamp_min(1e-12)
    d = (query.double()[:, :, None] - points.double()[:, None]).pow(2).sum(-1)
    ref_idx = d.topk(k, dim=-1, largest=False).indices  # float64 brute force (cdist's mm path rounds)
    same = (grid.sort(-1).values == ref_idx.sort(-1).values).all(-1)
    assert untied.any() and same[untied].all()


def test_grid_knn_small_and_edge_sizes() -> None:
    g = torch.Generator().manual_seed(1)
    for n, k in [(1, 1), (17, 17), (300, 16), (50, 50)]:
        points = torch.randn(3, n, 3, generator=g)
        idx = knn(points, points, k, method="grid")
        assert torch.allclose(_dist_of(points, points, idx), _ref_dist(points, points, k), atol=1e-10)


def test_grid_knn_deterministic_and_order_independent() -> None:
    g = torch.Generator().manual_seed(2)
    points = _clouds("surface", 1, 6000, g)
    query = points[:, :500]
    a = knn(query, points, 8, method="grid")
    assert torch.equal(a, knn(query, points, 8, method="grid"))
    perm = torch.randperm(6000, generator=g)
    b = knn(query, points[:, perm], 8, method="grid")
    assert torch.equal(perm[b].sort(-1).values, a.sort(-1).values)


def test_knn_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="method"):
        knn(torch.rand(1, 4, 3), torch.rand(1, 4, 3), 2, method="kd")


def _covering_radius(pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Largest distance from any point to its nearest sample (lower is better spread)."""
    return torch.cdist(pos, gather(pos, idx)).amin(-1).amax(-1)


def test_bucket_fps_is_a_good_sample() -> None:
    g = torch.Generator().manual_seed(3)
    pos = _clouds("surface", 2, 8192, g)
    m = 1024
    fast = farthest_point_sample(pos, m, method="bucket")
    assert fast.shape == (2, m) and fast.dtype == torch.long
    assert all(len(set(row.tolist())) == m for row in fast)  # distinct
    assert torch.equal(fast, farthest_point_sample(pos, m, method="bucket"))  # deterministic
    exact = farthest_point_sample(pos, m, method="exact")
    rand = torch.randperm(8192, generator=g)[:m].expand(2, m)
    r_fast, r_exact, r_rand = _covering_radius(pos, fast), _covering_radius(pos, exact), _covering_radius(pos, rand)
    assert (r_fast <= 2.0 * r_exact).all()  # within a factor 2 of exact FPS (2-approximation bound scale)
    assert (r_fast < r_rand).all()  # and clearly better spread than random sampling


def test_bucket_fps_is_independent_of_point_order_and_takes_all_points() -> None:
    g = torch.Generator().manual_seed(4)
    pos = torch.rand(1, 5000, 3, generator=g)
    perm = torch.randperm(5000, generator=g)
    a = farthest_point_sample(pos, 700, method="bucket", leaf_size=256)
    b = farthest_point_sample(pos[:, perm], 700, method="bucket", leaf_size=256)
    assert torch.equal(perm[b], a)
    full = farthest_point_sample(pos, 5000, method="bucket", leaf_size=256)  # m = N: a permutation
    assert torch.equal(full.sort(-1).values, torch.arange(5000)[None])


def test_auto_fps_is_exact_at_large_sizes() -> None:
    """The fast operator is exact FPS at every size (no switch to an approximation above some N)."""
    pos = torch.rand(2, 8192, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(farthest_point_sample(pos, 256), farthest_point_sample(pos, 256, method="exact"))
    with pytest.raises(ValueError, match="method"):
        farthest_point_sample(pos, 4, method="fast")
