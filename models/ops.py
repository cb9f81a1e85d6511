"""Point operations: k-nearest neighbours, farthest point sampling, gathering.

Batched ``[B, N, C]`` tensors throughout. Indices are ``torch.long``. The reference paths run
wherever torch runs (CPU, CUDA, MPS). Memory of the distance computations stays ``O(chunk * N)``.

Every search has a plain reference path (``method="brute"`` / ``"exact"``) and fast paths: kNN's exact
sorted-cell grid of ``models.spatial`` (``"auto"`` picks it by size); FPS's exact kernels behind one custom
operator (``"auto"``: Triton on CUDA, ``torch_quickfps`` on the CPU) and an approximate bucketed variant.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
from torch import Tensor

from models.spatial import bucket_fps, grid_knn

# Size from which the grid kNN beats the brute-force reference on CPU (see the neighbour-search table of
# BENCHMARKS.md, `python -m app.benchmark`); below it method="auto" keeps the reference.
GRID_KNN_MIN_POINTS = 4096


def _check_points(name: str, pos: Tensor) -> None:
    if pos.dim() != 3 or pos.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [B, N, 3], got {tuple(pos.shape)}")
    if pos.shape[1] == 0:
        raise ValueError(f"{name} is empty: a point cloud needs at least one point")
    if not torch.compiler.is_compiling() and not torch.isfinite(pos).all():  # a host sync; no branch in a graph
        raise ValueError(f"{name} contains NaN or infinite coordinates")


def widest_dtype(*tensors: Tensor | torch.dtype | None) -> torch.dtype:
    """The dtype every one of ``tensors`` (or dtypes; ``None`` skipped) promotes to."""
    dtypes = [t if isinstance(t, torch.dtype) else t.dtype for t in tensors if t is not None]
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


def flat_index(idx: Tensor, num_points: int) -> Tensor:
    """Per-cloud indices ``[B, *S]`` into ``num_points`` points → indices into the flattened ``B·num_points`` rows."""
    B = idx.shape[0]
    return idx + torch.arange(B, device=idx.device).view(B, *[1] * (idx.dim() - 1)) * num_points


def gather(x: Tensor, idx: Tensor) -> Tensor:
    """Gather rows of ``x`` along the point axis (``index_select`` on the flattened batch: one read per row).

    Shapes:
        x: ``[B, N, C]``; idx: ``[B, *S]`` long with values in ``[0, N)``.
        returns ``[B, *S, C]``.
    """
    B, N, C = x.shape
    return x.reshape(B * N, C).index_select(0, flat_index(idx, N).reshape(-1)).view(*idx.shape, C)


def knn(
    query: Tensor,
    points: Tensor,
    k: int,
    chunk_size: int = 2048,
    method: Literal["auto", "brute", "grid"] = "auto",
    validate: bool = True,
) -> Tensor:
    """Indices of the ``k`` nearest ``points`` of every ``query`` (squared Euclidean distance).

    Points at exactly equal distance come in no guaranteed order (``topk`` is not a stable sort); on one
    device the same input always gives the same result.

    ``validate=False`` skips the shape and finiteness checks (each costs a device-to-host sync); the model
    checks its input once and passes ``False``.

    ``method``: ``"brute"`` is the chunked ``O(M·N)`` reference; ``"grid"`` the exact sorted-cell search
    of ``models.spatial.grid_knn`` (same neighbour sets, up to points at exactly equal distance;
    ``chunk_size`` does not apply); ``"auto"`` uses the grid from ``GRID_KNN_MIN_POINTS`` points on.

    Shapes:
        query: ``[B, M, 3]``; points: ``[B, N, 3]``.
        returns ``[B, M, k]`` long, nearest first.
    """
    if validate:
        _check_points("query", query)
        _check_points("points", points)
    if query.shape[0] != points.shape[0]:
        raise ValueError(f"batch sizes differ: query {query.shape[0]} vs points {points.shape[0]}")
    n = points.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of points N={n}")
    if method not in ("auto", "brute", "grid"):
        raise ValueError(f"unknown kNN method {method!r}: use 'auto', 'brute' or 'grid'")
    if method == "grid" or (method == "auto" and n >= GRID_KNN_MIN_POINTS):
        return grid_knn(query, points, k)
    out = []
    with torch.autocast(points.device.type, enabled=False):  # distances in float32 at least, never bf16
        dtype = widest_dtype(torch.float32, query, points)
        points, query = points.to(dtype), query.to(dtype)
        points_t, sq_points = points.transpose(1, 2), points.square().sum(-1).unsqueeze(1)  # (B, 3, N), (B, 1, N)
        for q in query.split(chunk_size, dim=1):  # memory O(chunk * N)
            # |q − p|² = |p|² − 2 q·p + |q|², one batched matmul (torch.cdist's own formula for these sizes,
            # without its square root, which the ranking does not need)
            d = torch.baddbmm(sq_points, q, points_t, alpha=-2).add_(q.square().sum(-1, keepdim=True))  # (B, chunk, N)
            out.append(torch.topk(d, k, dim=-1, largest=False, sorted=True).indices)
    return torch.cat(out, dim=1)


def farthest_from_mean(pos: Tensor) -> Tensor:
    """Index ``[B]`` long of each cloud's point farthest from its mean: where FPS starts (docs/operator.md §2),
    so that the sample does not depend on the order of the points (up to exact ties)."""
    return (pos - pos.mean(dim=1, keepdim=True)).pow(2).sum(-1).argmax(-1)


def _exact_fps(pos: Tensor, m: int, start: Tensor) -> Tensor:
    """The ``O(m·N)`` reference loop of exact FPS from ``start`` ``[B]``: each pick is the point farthest from
    the picks so far (ties to the lower index, as ``argmax``). Returns ``[B, m]`` long."""
    B, N, _ = pos.shape
    idx = torch.empty(B, m, dtype=torch.long, device=pos.device)
    batch = torch.arange(B, device=pos.device)
    far, dist = start, torch.full((B, N), float("inf"), dtype=pos.dtype, device=pos.device)
    for i in range(m):
        idx[:, i] = far
        dist = torch.minimum(dist, (pos - pos[batch, far].unsqueeze(1)).pow(2).sum(-1))  # (B, N)
        far = dist.argmax(-1)
    return idx


def _quickfps(pos: Tensor, m: int, start: Tensor) -> Tensor:
    """Exact FPS by ``torch_quickfps`` (QuickFPS: kd-tree buckets, the batch's clouds in parallel threads).

    Its start index is one for the whole batch, so each cloud's start is swapped to row 0 and the picks are
    mapped back through the swap."""
    import torch_quickfps

    B, N, _ = pos.shape
    swap = torch.arange(N, device=pos.device).repeat(B, 1)
    batch = torch.arange(B, device=pos.device)
    swap[batch, start] = 0
    swap[:, 0] = start
    picks = torch_quickfps.sample_idx(gather(pos, swap).contiguous(), m, start_idx=0)
    return swap.gather(1, picks)


#: Triton ships with the CUDA builds of torch: on CUDA the FPS here and the per-pair work of ``models.pairs`` run
#: as its kernels.
TRITON = importlib.util.find_spec("triton") is not None
#: Exact FPS on the CPU by ``torch_quickfps`` where its wheel exists (Linux x86-64, macOS arm64); elsewhere the
#: reference loop.
QUICKFPS = importlib.util.find_spec("torch_quickfps") is not None


@torch.library.custom_op("centroid::farthest_point_sample", mutates_args=())
def _fps_op(pos: Tensor, m: int) -> Tensor:
    """Exact FPS of ``m`` indices per cloud from the point farthest from its mean, one operator for
    ``torch.compile`` and export: the Triton kernel on CUDA (``models.triton_fps``), ``torch_quickfps`` on the
    CPU, the reference loop elsewhere (docs/operator.md §2)."""
    pos = pos.to(widest_dtype(torch.float32, pos))  # distances and the mean in float32 at least, never bf16
    start = farthest_from_mean(pos)
    if pos.device.type == "cuda" and TRITON:
        from models.triton_fps import triton_farthest_point_sample

        return triton_farthest_point_sample(pos, m, start, validate=False)
    if pos.device.type == "cpu" and QUICKFPS and pos.dtype != torch.float64:
        return _quickfps(pos, m, start)
    return _exact_fps(pos, m, start)


@_fps_op.register_fake
def _(pos: Tensor, m: int) -> Tensor:
    return pos.new_empty((pos.shape[0], m), dtype=torch.long)


def farthest_point_sample(
    pos: Tensor,
    m: int,
    method: Literal["auto", "exact", "bucket"] = "auto",
    leaf_size: int = 1024,
    start: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Farthest point sampling of ``m`` indices per cloud.

    **choice** (docs/operator.md §2): start at the point farthest from the cloud's mean, so that the result
    does not depend on the order of the points (up to exact ties); ``start`` ``[B]`` long overrides it
    (``"exact"`` only).

    ``method``: ``"auto"`` is exact FPS by the fastest kernel of the device, one custom operator
    (``centroid::farthest_point_sample``: Triton on CUDA, ``torch_quickfps`` on the CPU; the same indices as
    ``"exact"`` up to exact distance ties); ``"exact"`` is the ``O(m·N)`` pure-torch reference loop;
    ``"bucket"`` the approximate, linear-time FPS inside kd-tree leaves of about ``leaf_size`` points
    (``models.spatial.bucket_fps``, **choice**: for devices without a fast exact kernel).

    ``validate=False`` skips the shape and finiteness checks (a host sync); the model checks its input once.

    Shapes:
        pos: ``[B, N, 3]``; returns ``[B, m]`` long.
    """
    if validate:
        _check_points("pos", pos)
    B, N, _ = pos.shape
    if not 1 <= m <= N:
        raise ValueError(f"cannot sample m={m} points from N={N}: need 1 <= m <= N")
    if method not in ("auto", "exact", "bucket"):
        raise ValueError(f"unknown FPS method {method!r}: use 'auto', 'exact' or 'bucket'")
    if start is not None and method != "exact":
        raise ValueError(f"start is for method='exact', not {method!r}")
    if method == "bucket":
        return bucket_fps(pos, m, leaf_size)
    if method == "auto":
        return torch.ops.centroid.farthest_point_sample(pos, m)
    return _exact_fps(pos, m, farthest_from_mean(pos) if start is None else start)


def random_sample(pos: Tensor, m: int, generator: torch.Generator | None = None) -> Tensor:
    """``m`` distinct random indices per cloud (a cheaper alternative to FPS).

    Shapes:
        pos: ``[B, N, 3]``; returns ``[B, m]`` long.
    """
    _check_points("pos", pos)
    B, N, _ = pos.shape
    if not 1 <= m <= N:
        raise ValueError(f"cannot sample m={m} points from N={N}: need 1 <= m <= N")
    noise = torch.rand(B, N, generator=generator, device=pos.device)
    return noise.argsort(dim=-1)[:, :m]
