"""The FPS kernel of ``models.triton_fps`` against the exact reference ``models.ops.farthest_point_sample``: the same
indices, bit for bit (same distance formula and sum order, ties to the lowest index). Compiled on CUDA; elsewhere
on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before Triton is
imported), so the sizes stay small."""

from __future__ import annotations

import pytest
import torch

from models.ops import farthest_point_sample

pytest.importorskip("triton", reason="Triton is not installed (the dev extras bring it on Linux x86-64)")

from models.triton_fps import triton_farthest_point_sample

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _cloud(B: int, N: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian points (no exact distance ties) and a random start per cloud."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(B, N, 3, generator=g, dtype=torch.float64).to(dtype)
    return pos, torch.randint(0, N, (B,), generator=g)


def _reference(pos: torch.Tensor, m: int, start: torch.Tensor) -> torch.Tensor:
    return farthest_point_sample(pos.cpu(), m, method="exact", start=start.cpu())


def _fps(pos: torch.Tensor, m: int, start: torch.Tensor, **kwargs: object) -> torch.Tensor:
    return triton_farthest_point_sample(pos.to(DEVICE), m, start.to(DEVICE), **kwargs).cpu()


def _tied_picks(pos: torch.Tensor, idx: torch.Tensor) -> int:
    """How many picks (after the first) were chosen among several points at the same, largest, running distance."""
    ties = 0
    for cloud, picks in zip(pos.double(), idx, strict=True):
        dist = torch.full((cloud.shape[0],), float("inf"), dtype=torch.float64)
        for p in picks[:-1]:
            dist = torch.minimum(dist, (cloud - cloud[p]).pow(2).sum(-1))
            ties += int((dist == dist.max()).sum() > 1)
    return ties


#: (B, N, m): sizes off the powers of two (masked lanes), a single pick, every point picked, a one-point cloud.
SIZES = [(2, 100, 20), (3, 300, 40), (3, 129, 1), (2, 37, 37), (2, 64, 64), (1, 1, 1)]


@pytest.mark.parametrize("sizes", SIZES)
def test_equals_the_reference(sizes: tuple[int, int, int]) -> None:
    B, N, m = sizes
    pos, start = _cloud(B, N, seed=N + m)
    got = _fps(pos, m, start)
    assert got.dtype == torch.long and got.shape == (B, m)
    torch.testing.assert_close(got, _reference(pos, m, start), rtol=0, atol=0)
    # every point of a tie-free cloud is picked at most once
    assert all(len(set(row.tolist())) == m for row in got)


@pytest.mark.parametrize(("N", "m", "block"), [(150, 30, 16), (128, 25, 32), (37, 37, 16), (300, 12, 64)])
def test_tiled_path_equals_the_register_path_and_the_reference(N: int, m: int, block: int) -> None:
    """Clouds larger than ``block`` are swept in tiles with the running distances in global memory (a last tile
    partly masked, or none); the register path and the reference give the same indices."""
    pos, start = _cloud(2, N, seed=block + N)
    tiled = _fps(pos, m, start, block=block)
    torch.testing.assert_close(tiled, _fps(pos, m, start), rtol=0, atol=0)
    torch.testing.assert_close(tiled, _reference(pos, m, start), rtol=0, atol=0)


def test_float64_distances_in_float64() -> None:
    """A cloud 1000 away from the origin with a spread of 1e-4: float32 coordinates and distances lose the order
    (the float32 reference picks other points), the kernel on float64 keeps the float64 reference's."""
    pos, start = _cloud(2, 120, seed=3, dtype=torch.float64)
    pos = 1000 + 1e-4 * pos
    want = _reference(pos, 30, start)
    assert not torch.equal(want, _reference(pos.float(), 30, start))  # the test can tell float64 from float32
    torch.testing.assert_close(_fps(pos, 30, start), want, rtol=0, atol=0)
    torch.testing.assert_close(_fps(pos, 30, start, block=32), want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_take_float32_distances(dtype: torch.dtype) -> None:
    """bf16/fp16 points: the reference's indices on the same values upcast to float32 (where the reference on the
    half-precision tensor itself, whose distances round to the input dtype, picks other points)."""
    pos, start = _cloud(3, 200, seed=5, dtype=dtype)
    want = _reference(pos.float(), 40, start)
    assert not torch.equal(want, _reference(pos, 40, start))  # the test can tell float32 from half distances
    torch.testing.assert_close(_fps(pos, 40, start), want, rtol=0, atol=0)
    torch.testing.assert_close(_fps(pos, 40, start, block=64), want, rtol=0, atol=0)


def test_start_is_honoured_per_cloud() -> None:
    """One cloud repeated with a different start in each copy: each row starts there and follows the reference."""
    pos, _ = _cloud(1, 90, seed=7)
    pos, start = pos.expand(3, -1, -1).contiguous(), torch.tensor([0, 45, 89])
    got = _fps(pos, 15, start)
    torch.testing.assert_close(got[:, 0], start, rtol=0, atol=0)
    assert len({tuple(row.tolist()) for row in got}) == 3  # other starts, other samples
    torch.testing.assert_close(got, _reference(pos, 15, start), rtol=0, atol=0)


def test_distances_rounded_as_the_reference_sums() -> None:
    """Clouds of 40 points within 1e-4 of the origin but for ``p`` (at 5) and ``p`` reversed (at 20), started at the
    origin: both are at the same true distance, so the second pick goes by the rounding of the float32 sums alone
    (in the registers, and across tiles of 16). The reference's ``(x² + y²) + z²`` decides it; the other
    order ``x² + (y² + z²)``, or fused multiply-adds (as CUDA compiles ``a * b + c`` unless told not to), would pick
    the other point in some of these clouds (checked here)."""
    g = torch.Generator().manual_seed(17)
    p = (torch.rand(400, 3, generator=g, dtype=torch.float64) * 2 - 1).float()

    def square_sum(v: torch.Tensor) -> torch.Tensor:  # the reference's order
        return (v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1]) + v[:, 2] * v[:, 2]

    p = p[square_sum(p) != square_sum(p.flip(-1))][:16]  # the clouds where the rounding decides
    pos = 1e-4 * torch.rand(16, 40, 3, generator=g)
    pos[:, 0], pos[:, 5], pos[:, 20] = 0, p, p.flip(-1)
    start = torch.zeros(16, dtype=torch.long)
    want = _reference(pos, 2, start)
    torch.testing.assert_close(want[:, 1], torch.where(square_sum(p) > square_sum(p.flip(-1)), 5, 20), rtol=0, atol=0)

    def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # a·b + c rounded once to float32
        return (a.double() * b.double() + c.double()).float()

    for other in (
        lambda v: v[:, 0] * v[:, 0] + (v[:, 1] * v[:, 1] + v[:, 2] * v[:, 2]),
        lambda v: fma(v[:, 2], v[:, 2], fma(v[:, 1], v[:, 1], v[:, 0] * v[:, 0])),
    ):
        assert (torch.where(other(p) > other(p.flip(-1)), 5, 20) != want[:, 1]).any()
    torch.testing.assert_close(_fps(pos, 2, start), want, rtol=0, atol=0)
    torch.testing.assert_close(_fps(pos, 2, start, block=16), want, rtol=0, atol=0)


@pytest.mark.parametrize("block", [None, 16])
def test_exact_ties_go_to_the_lowest_index(block: int | None) -> None:
    """Integer grid points (a 5 × 4 × 3 grid, shuffled, every point picked): many picks are exact ties, broken like
    ``torch.argmax`` (the lowest index), in the registers and across tiles."""
    g = torch.Generator().manual_seed(11)
    grid = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(4), torch.arange(3), indexing="ij"), -1)
    pos = torch.stack([grid.reshape(-1, 3)[torch.randperm(60, generator=g)] for _ in range(2)]).float()
    start = torch.tensor([0, 31])
    want = _reference(pos, 60, start)
    assert _tied_picks(pos, want) >= 20  # the ties the test is about
    torch.testing.assert_close(_fps(pos, 60, start, block=block), want, rtol=0, atol=0)


def test_bad_arguments_raise_value_error() -> None:
    pos, start = _cloud(2, 10, seed=13)
    bad = [
        (pos[..., :2], 3, start),  # not [B, N, 3]
        (pos[0], 3, start),  # no batch axis
        (pos.long(), 3, start),  # not floating point
        (pos, 0, start),  # m < 1
        (pos, 11, start),  # m > N
        (pos, 3, start[:1]),  # start not [B]
        (pos, 3, start.float()),  # start not integer
        (pos, 3, torch.tensor([0, 10])),  # start out of range
        (pos, 3, torch.tensor([-1, 0])),
        (pos.index_put((torch.tensor([1]), torch.tensor([4])), torch.tensor(float("nan"))), 3, start),  # NaN
    ]
    for p, m, s in bad:
        with pytest.raises(ValueError):
            triton_farthest_point_sample(p, m, s)
    with pytest.raises(ValueError, match="power of two"):
        triton_farthest_point_sample(pos, 3, start, block=24)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="start is on"):
            triton_farthest_point_sample(pos.cuda(), 3, start)
    # validate=False skips only the value checks; a valid call then gives the reference's indices
    torch.testing.assert_close(_fps(pos, 4, start, validate=False), _reference(pos, 4, start), rtol=0, atol=0)


def _grid_clouds(B: int, side: int, seed: int) -> torch.Tensor:
    """``B`` shuffled copies of the integer grid ``side³`` (float32): exact distance ties everywhere."""
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(side)
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3).float()
    return torch.stack([grid[torch.randperm(side**3, generator=g)] for _ in range(B)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("N", [1024, 4096])
@pytest.mark.parametrize("cloud", ["float32", "float64", "bfloat16", "grid"])
def test_cuda_kernel_matches_the_cpu_reference(N: int, cloud: str) -> None:
    """Compiled (no fused multiply-adds): batch 8, the register path and a tiled sweep give the CPU reference's
    indices; Gaussian clouds in three dtypes, and integer grids of 10³ and 16³ points (ties broken to the lowest
    index across warps)."""
    if cloud == "grid":
        pos, start = _grid_clouds(8, round(N ** (1 / 3)), seed=N), torch.arange(8) * 97
    else:
        pos, start = _cloud(8, N, seed=N, dtype=getattr(torch, cloud))
    want = _reference(pos.float() if pos.dtype == torch.bfloat16 else pos, 512, start)
    if cloud == "grid":
        assert _tied_picks(pos[:1], want[:1]) > 100
    cuda_pos, cuda_start = pos.cuda(), start.cuda()
    for block in (None, 256):
        got = triton_farthest_point_sample(cuda_pos, 512, cuda_start, block=block)
        assert got.is_cuda
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)
