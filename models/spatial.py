"""Fast spatial search in pure torch: exact grid kNN and bucketed farthest point sampling.

These are the near-linear paths behind ``models.ops.knn(method="grid")`` and
``models.ops.farthest_point_sample(method="bucket")``; ``models.ops`` keeps the plain brute-force
references beside them. No compiled kernels: sorting, ``searchsorted`` and gathers only.

**Grid kNN** (exact). Points are hashed into cubic cells of side ``h`` and sorted by cell key, so the
points of a row of consecutive cells along x are one contiguous slice. Each query scans the 3×3×3 cells
around its own (9 slices), takes the ``k`` nearest candidates, and *certifies* them: if the k-th
candidate distance is at most the distance ``r`` from the query to the nearest face of the scanned block,
no unscanned point can be closer, so the result equals the brute-force one. Uncertified queries (sparse
regions) retry with the 5×5×5 block, and the rare rest are answered by brute force, so the result is
always exact. ``h`` is the 90th percentile of the k-th neighbour distance of a strided sample of queries:
most queries certify at once, and the candidates per query stay ``O(k)`` whatever the density (surface
clouds included). Cost ``O((N + M·k) log N)`` instead of ``O(M·N)``.

**Bucket FPS** (approximate, a **choice**). Exact FPS is ``m`` sequential passes over all ``N`` points,
``O(m·N)`` = ``O(N²)`` when ``m ∝ N``. Here the cloud is split by a balanced kd-tree (median splits of the
widest axis) into ``L`` leaves of about ``leaf_size`` points, and exact FPS runs in every leaf at once,
``ceil(m / L)`` passes over ``N`` points: ``O(N · leaf_size · m / N)``, linear in ``N`` at a fixed
sampling ratio. Samples are spread within each leaf; two samples on either side of a leaf border can be
closer than global FPS would allow. The output interleaves the leaves (first sample of every leaf, then
the second, ...), so prefixes stay spread over the whole cloud. Deterministic, and independent of point
order up to exact coordinate ties, like the exact path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _sq_dist_rows(query: Tensor, points: Tensor) -> Tensor:
    """Exact squared distances by differences (no ``|a|²+|b|²-2ab`` cancellation).

    Shapes:
        query: ``[Q, 3]``; points: ``[P, 3]``; returns ``[Q, P]``.
    """
    return (query.unsqueeze(1) - points.unsqueeze(0)).pow(2).sum(-1)


def _brute_rows(query: Tensor, points: Tensor, k: int, chunk_size: int = 1024) -> Tensor:
    """Brute-force kNN of one cloud with exact differences. Returns ``[Q, k]`` long, nearest first."""
    out = [torch.topk(_sq_dist_rows(q, points), k, dim=-1, largest=False, sorted=True).indices
           for q in query.split(chunk_size)]
    return torch.cat(out) if out else query.new_empty(0, k, dtype=torch.long)


def grid_cell_size(query: Tensor, points: Tensor, k: int, samples: int = 256, quantile: float = 0.9) -> Tensor:
    """Cell side per cloud: a quantile of the k-th neighbour distance over a strided query sample.

    Shapes:
        query: ``[B, M, 3]``; points: ``[B, N, 3]``; returns ``[B]`` (strictly positive).
    """
    M = query.shape[1]
    sel = torch.linspace(0, M - 1, min(M, samples), device=query.device).round().long()  # deterministic
    d2 = torch.cdist(query[:, sel], points).pow(2)  # (B, S, N)
    kth = torch.topk(d2, k, dim=-1, largest=False).values[..., -1].clamp_min(0).sqrt()  # (B, S)
    h = torch.quantile(kth.float(), quantile, dim=1).to(points.dtype)
    extent = (points.amax(1) - points.amin(1)).amax(-1)  # (B,)
    # Floor: duplicates give h = 0; keep at most ~2^18 cells per axis so int64 keys never overflow.
    floor = torch.where(extent > 0, extent / 2**18, torch.ones_like(extent))
    return torch.maximum(h, floor)


def grid_knn(query: Tensor, points: Tensor, k: int, budget: int = 1 << 22) -> Tensor:
    """Exact k nearest ``points`` of every ``query`` with a sorted-cell grid (see the module docstring).

    Args:
        budget: max candidate distances held at once (memory ``O(budget)``).

    Shapes:
        query: ``[B, M, 3]``; points: ``[B, N, 3]``; returns ``[B, M, k]`` long, nearest first.
    """
    B, N, _ = points.shape
    M = query.shape[1]
    dev = points.device
    h = grid_cell_size(query, points, k)  # (B,)
    lo = points.amin(1)  # (B, 3)
    G = ((points.amax(1) - lo) / h[:, None]).floor().long() + 1  # (B, 3) cells per axis
    Gm = G.amax(0)  # common strides for the keys
    strides = torch.stack([torch.ones_like(Gm[0]), Gm[0], Gm[0] * Gm[1]])  # x, y, z
    batch_stride = Gm[0] * Gm[1] * Gm[2]

    def cells(p: Tensor) -> Tensor:  # (B, *, 3) -> integer cell coords, clamped to each cloud's grid
        c = ((p - lo[:, None]) / h[:, None, None]).floor().long()
        return torch.minimum(c.clamp_min(0), G[:, None] - 1)

    barange = torch.arange(B, device=dev)
    pkey = (cells(points) * strides).sum(-1) + barange[:, None] * batch_stride  # (B, N)
    skey, order = torch.sort(pkey.reshape(-1), stable=True)  # order: flat index b*N + n
    spos = points.reshape(-1, 3)[order].t().contiguous()  # (3, B*N) coordinates in cell order

    cq = cells(query)  # (B, M, 3)
    qrel = (query - lo[:, None]) / h[:, None, None]  # (B, M, 3) query position in cell units
    qkey = ((cq * strides).sum(-1) + barange[:, None] * batch_stride).reshape(-1)  # (B*M,)
    # Process queries in cell order so each chunk pads its slices to a similar length.
    todo = torch.argsort(qkey, stable=True)
    cqf, Gq, qrelf = cq.reshape(-1, 3), G.repeat_interleave(M, 0), qrel.reshape(-1, 3)
    qflat = query.reshape(-1, 3)
    out = torch.empty(B * M, k, dtype=torch.long, device=dev)
    for ring in (1, 2):  # scan the (2R+1)³ block; the few uncertified queries retry with R = 2
        if not todo.numel():
            break
        c, g = cqf[todo], Gq[todo]  # (Q, 3)
        bkey = qkey[todo] - (c * strides).sum(-1)  # batch offset of every query
        x0 = (c[:, 0] - ring).clamp_min(0)
        x1 = torch.minimum(c[:, 0] + ring, g[:, 0] - 1)
        starts, ends = [], []
        for dz in range(-ring, ring + 1):
            for dy in range(-ring, ring + 1):
                y, z = c[:, 1] + dy, c[:, 2] + dz
                inside = (y >= 0) & (y < g[:, 1]) & (z >= 0) & (z < g[:, 2])
                row = bkey + y * strides[1] + z * strides[2]
                s = torch.searchsorted(skey, row + x0, right=False)
                e = torch.searchsorted(skey, row + x1, right=True)
                starts.append(s)
                ends.append(torch.where(inside, e, s))  # rows outside the grid are empty
        start = torch.stack(starts, 1)  # (Q, R2) with R2 = (2R+1)² rows
        length = torch.stack(ends, 1) - start  # (Q, R2)
        if ring == 1 and int(length.sum()) > B * M * N // 4:  # degenerate (mostly duplicates): no pruning
            return torch.stack([_brute_rows(query[b], points[b], k) for b in range(B)])
        # Certified radius: distance to the nearest face of the scanned block with unscanned cells
        # beyond it, shrunk by a relative epsilon against rounding in the cell hashing.
        qr = qrelf[todo]
        inf = torch.tensor(float("inf"), dtype=query.dtype, device=dev)
        below = torch.where(c - ring >= 1, qr - (c - ring), inf)
        above = torch.where(c + ring + 1 <= g - 1, (c + ring + 1) - qr, inf)
        radius = torch.minimum(below, above).amin(-1) * h[todo // M] * (1 - 1e-5)
        ok = _scan_rows(qflat[todo], start, length, spos, k, budget, out, todo, order, radius.pow(2))
        todo = todo[~ok]
    if todo.numel():  # still uncertified (isolated queries): exact brute force against their own cloud
        for b in torch.unique(todo // M).tolist():
            rows = todo[todo // M == b]
            out[rows] = _brute_rows(qflat[rows], points[b], k) + b * N
    out = out - (torch.arange(B * M, device=dev) // M * N)[:, None]  # flat -> per-cloud indices
    return out.reshape(B, M, k)


def _scan_rows(
    q: Tensor, start: Tensor, length: Tensor, spos: Tensor, k: int, budget: int,
    out: Tensor, ids: Tensor, order: Tensor, radius2: Tensor,
) -> Tensor:
    """k nearest among contiguous slices of the cell-sorted points, written to ``out[ids]``.

    Shapes:
        q: ``[Q, 3]``; start, length: ``[Q, R]`` slices of ``spos [3, P]``; radius2: ``[Q]``.
        returns ``ok [Q]`` bool: the k-th distance is certified (at most ``radius2``).
    """
    Q, R = start.shape
    dev = q.device
    ok = torch.zeros(Q, dtype=torch.bool, device=dev)
    row_max = length.amax(1)
    i = 0
    while i < Q:
        c = max(1, budget // (R * max(int(row_max[i]), 1)))
        L = max(int(row_max[i:i + c].max()), 1)
        sl = slice(i, i + c)
        ar = torch.arange(L, device=dev)
        cand = (start[sl, :, None] + ar).clamp_max(spos.shape[1] - 1).flatten(1)  # (c, R*L)
        d2 = (spos[0][cand] - q[sl, 0:1]).square_()  # (c, R*L), one coordinate at a time
        d2 += (spos[1][cand] - q[sl, 1:2]).square_()
        d2 += (spos[2][cand] - q[sl, 2:3]).square_()
        d2 = d2.masked_fill(~(ar < length[sl, :, None]).flatten(1), float("inf"))
        if d2.shape[1] >= k:
            vals, arg = torch.topk(d2, k, dim=-1, largest=False, sorted=True)
            ok[sl] = vals[:, -1] <= radius2[sl]
            out[ids[sl]] = order[torch.gather(cand, 1, arg)]
        i += c
    return ok


def _fps_rows(pos: Tensor, valid: Tensor, m: int) -> Tensor:
    """Exact FPS in every row at once, over the valid points only.

    Starts at the valid point farthest from the row's mean (order-independent).

    Shapes:
        pos: ``[R, S, 3]``; valid: ``[R, S]`` bool; returns ``[R, m]`` long.
    """
    R, S, _ = pos.shape
    rows = torch.arange(R, device=pos.device)
    w = valid.to(pos.dtype).unsqueeze(-1)
    mean = (pos * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
    neg = torch.tensor(float("-inf"), dtype=pos.dtype, device=pos.device)
    far = torch.where(valid, (pos - mean).pow(2).sum(-1), neg).argmax(-1)  # (R,)
    dist = torch.where(valid, torch.full_like(valid, float("inf"), dtype=pos.dtype), neg)  # (R, S)
    idx = torch.empty(R, m, dtype=torch.long, device=pos.device)
    for i in range(m):
        idx[:, i] = far
        d = (pos - pos[rows, far].unsqueeze(1)).pow(2).sum(-1)  # (R, S)
        dist = torch.minimum(dist, d)
        far = dist.argmax(-1)
    return idx


def kd_leaves(pos: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """Balanced kd-tree partition: ``levels`` median splits of each node's widest axis.

    Sizes of the ``2**levels`` leaves differ by at most one point and are the same for every cloud.

    Shapes:
        pos: ``[B, N, 3]``; returns ``(leaf_index [B, L, S] long, padded with -1; valid [B, L, S] bool)``
        with ``L = 2**levels`` and ``S = ceil(N / L)``.
    """
    B, N, _ = pos.shape
    dev = pos.device
    node = torch.zeros(B, N, dtype=torch.long, device=dev)
    arange = torch.arange(N, device=dev).expand(B, N)
    for level in range(levels):
        n_nodes = 1 << level
        # widest axis of every node: (B, n_nodes, 3) extents via scatter-reduce
        ix = node.unsqueeze(-1).expand(-1, -1, 3)
        hi = torch.full((B, n_nodes, 3), float("-inf"), dtype=pos.dtype, device=dev).scatter_reduce(1, ix, pos, "amax")
        lo = torch.full((B, n_nodes, 3), float("inf"), dtype=pos.dtype, device=dev).scatter_reduce(1, ix, pos, "amin")
        axis = (hi - lo).argmax(-1)  # (B, n_nodes)
        v = torch.gather(pos, 2, torch.gather(axis, 1, node).unsqueeze(-1)).squeeze(-1)  # (B, N)
        o1 = torch.argsort(v, dim=1, stable=True)
        o2 = torch.argsort(torch.gather(node, 1, o1), dim=1, stable=True)
        perm = torch.gather(o1, 1, o2)  # points sorted by (node, coordinate)
        size = torch.bincount(node[0], minlength=n_nodes)  # same for every cloud
        first = torch.cumsum(size, 0) - size
        snode = torch.gather(node, 1, perm)
        rank = arange - first[snode]  # rank within the node
        child = 2 * snode + (rank >= (size[snode] // 2)).long()
        node = torch.empty_like(node).scatter_(1, perm, child)
    L = 1 << levels
    perm = torch.argsort(node, dim=1, stable=True)  # points grouped by leaf
    size = torch.bincount(node[0], minlength=L)
    first = torch.cumsum(size, 0) - size
    S = int(size.max())
    snode = torch.gather(node, 1, perm)
    slot = snode * S + (arange - first[snode])
    leaf = torch.full((B, L * S), -1, dtype=torch.long, device=dev).scatter_(1, slot, perm)
    leaf = leaf.view(B, L, S)
    return leaf, leaf >= 0


def bucket_fps(pos: Tensor, m: int, leaf_size: int = 1024) -> Tensor:
    """Approximate FPS: exact FPS inside the leaves of a balanced kd-tree (see the module docstring).

    Shapes:
        pos: ``[B, N, 3]``; returns ``[B, m]`` long, distinct indices.
    """
    B, N, _ = pos.shape
    levels = max(0, min(int(math.log2(max(N // leaf_size, 1))), int(math.log2(m))))
    leaf, valid = kd_leaves(pos, levels)  # (B, L, S)
    L, S = leaf.shape[1:]
    size = valid[0].sum(-1)  # (L,) points per leaf
    # m_l: m split evenly over the leaves, the remainder to the largest leaves first; this always fits
    # (m <= N and leaf sizes differ by at most one point).
    quota = torch.full((L,), m // L, dtype=torch.long, device=pos.device)
    quota[torch.argsort(size, descending=True, stable=True)[: m % L]] += 1
    steps = int(quota.max())
    lpos = torch.gather(pos, 1, leaf.clamp_min(0).view(B, -1, 1).expand(-1, -1, 3)).view(B * L, S, 3)
    local = _fps_rows(lpos, valid.view(B * L, S), steps).view(B, L, steps)  # (B, L, steps)
    glob = torch.gather(leaf, 2, local)  # (B, L, steps) cloud indices
    take = torch.arange(steps, device=pos.device)[:, None] < quota[None, :]  # (steps, L)
    return glob.transpose(1, 2)[:, take]  # interleaved: step-major, then leaf


#: (shift, mask) steps that spread the 10 bits of a cell index three apart (bit i → bit 3i): 12 whole-tensor
#: operations for the Z-order code instead of 3 per bit and axis (each one a kernel launch on a GPU).
_SPREAD_10_BITS = ((16, 0x030000FF), (8, 0x0300F00F), (4, 0x030C30C3), (2, 0x09249249))


def locality_order(pos: Tensor) -> Tensor:
    """A permutation of each cloud's points along a Z-order (Morton) curve of 2^10 cells per axis: points close
    in space come close in the order. Used to process centroids in an order whose neighbourhoods overlap from
    one row to the next, so that gathered inputs are reused from the cache (docs/operator.md §7).

    Shapes:
        pos: ``[B, M, 3]``; returns ``[B, M]`` long.
    """
    lo, hi = pos.amin(1, keepdim=True), pos.amax(1, keepdim=True)
    cells = ((pos - lo) / (hi - lo).clamp_min(torch.finfo(pos.dtype).tiny) * (2**10 - 1)).round().long()
    for shift, mask in _SPREAD_10_BITS:  # the bits of x, y and z, each spread three apart
        cells = (cells | (cells << shift)) & mask
    code = cells[..., 0] | (cells[..., 1] << 1) | (cells[..., 2] << 2)  # interleaved: bit 3i + axis
    # ties broken by the index inside the key: the stable order from a plain sort, which ONNX can express
    M = pos.shape[1]
    return torch.argsort(code * M + torch.arange(M, device=pos.device), dim=1)
