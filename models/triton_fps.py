"""Farthest point sampling as one Triton kernel launch, for CUDA: every pick of every cloud in one launch.

The exact path of :func:`models.ops.farthest_point_sample` (the seeds of docs/operator.md §2) loops over the ``m``
picks in Python, each pick a handful of ``[B, N]`` kernels (distance, running minimum, argmax) and their launch
overhead. :func:`triton_farthest_point_sample` runs the whole loop inside one kernel, one program per cloud
(grid ``(B,)``):

- **Register path** (``N`` up to ``block``: :data:`MAX_BLOCK_N`, 8192, by default; 4096 for float64): the
  program loads its cloud's coordinates once and keeps them, with the running minimum squared distance of each
  point to the picks so far, in registers (``BLOCK_N``, the next power of two of ``N``, lanes; masked lanes hold
  distance ``-1`` and never win). Each pick: store the index, load the picked point, update the distances, one
  argmax reduction.
- **Tiled path** (``N`` above ``block``): the same loop, but each pick sweeps the cloud in tiles of ``block``
  points, reading the running distances from and writing them back to a scratch buffer ``[B, N]`` in global
  memory; the per-tile maxima are combined keeping the first (lowest-index) tile on equal values.

**Same indices as the reference.** Distances are computed as the reference computes them:
``(px - cx)² + (py - cy)² + (pz - cz)²`` summed in that order (the order of ``Tensor.sum`` over the last axis of
``[B, N, 3]`` on the CPU), in float32 for float32, float16 and bfloat16 inputs (loaded and upcast) and in float64
for float64; the kernel is compiled with ``enable_fp_fusion=False`` so that no multiply-add is fused (a fused
``fma`` rounds once where the reference rounds twice). Ties go to the lowest index, as ``torch.argmax``: Triton's
``tl.argmax`` with ``tie_break_left=True``. So float32 and float64 inputs give the reference's indices bit for bit;
float16/bfloat16 inputs give the reference's indices on the same values upcast to float32 (the reference itself
computes in the input dtype there).

Plain function, no autograd (indices carry no gradient). Tested against the reference on the CPU through
Triton's interpreter (``TRITON_INTERPRET=1``) and, compiled, on CUDA (tests/models/test_triton_fps.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: Largest cloud kept in registers (one lane per point, a power of two) for float32 distances; larger clouds take
#: the tiled path with tiles of this many points. Compiled for sm_90 (cuobjdump): at 16 warps, 110 registers a
#: thread and no spills; 16384 lanes spill (the 128 registers a thread gets at 16 warps are too few).
MAX_BLOCK_N = 8192
#: The same for float64 distances (twice the registers): 4096 lanes at 8 warps take 202 registers and do not
#: spill, 8192 at 16 warps spill.
MAX_BLOCK_N_F64 = 4096
#: Points per thread that :func:`_num_warps` aims at (more warps for larger blocks, from 4 up to 16).
POINTS_PER_THREAD = 16

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@triton.jit
def _fps_kernel(
    pos_ptr, start_ptr, out_ptr, scratch_ptr, N, M, BLOCK_N: tl.constexpr, TILED: tl.constexpr, F64: tl.constexpr
):
    """One cloud: ``pos`` is ``[B, 3, N]`` (coordinates planar, coalesced loads), ``out`` ``[B, M]`` long, ``scratch``
    ``[B, N]`` running distances filled with +inf (tiled path only)."""
    ACC = tl.float64 if F64 else tl.float32  # the distances' dtype
    b = tl.program_id(0).to(tl.int64)
    xs, ys, zs = pos_ptr + b * 3 * N, pos_ptr + (b * 3 + 1) * N, pos_ptr + (b * 3 + 2) * N  # this cloud's planes
    out = out_ptr + b * M
    lanes = tl.arange(0, BLOCK_N)
    far = tl.load(start_ptr + b).to(tl.int64)  # the first pick
    if not TILED:
        ok = lanes < N
        x = tl.load(xs + lanes, mask=ok, other=0.0).to(ACC)
        y = tl.load(ys + lanes, mask=ok, other=0.0).to(ACC)
        z = tl.load(zs + lanes, mask=ok, other=0.0).to(ACC)
        dist = tl.where(ok, float("inf"), -1.0).to(ACC)  # masked lanes below every distance: never picked
        for i in range(M):
            tl.store(out + i, far)
            dx = x - tl.load(xs + far).to(ACC)
            dy = y - tl.load(ys + far).to(ACC)
            dz = z - tl.load(zs + far).to(ACC)
            dist = tl.minimum(dist, dx * dx + dy * dy + dz * dz)  # ((x² + y²) + z²), as the reference sums
            far = tl.argmax(dist, axis=0, tie_break_left=True).to(tl.int64)  # the lowest index on equal maxima
    else:
        scratch = scratch_ptr + b * N
        for i in range(M):
            tl.store(out + i, far)
            cx, cy, cz = tl.load(xs + far).to(ACC), tl.load(ys + far).to(ACC), tl.load(zs + far).to(ACC)
            best = tl.full([], -1.0, ACC)  # the largest distance so far in this sweep, and its index
            best_at = tl.full([], 0, tl.int64)
            for t in range(0, N, BLOCK_N):
                at = t + lanes
                ok = at < N
                dx = tl.load(xs + at, mask=ok, other=0.0).to(ACC) - cx
                dy = tl.load(ys + at, mask=ok, other=0.0).to(ACC) - cy
                dz = tl.load(zs + at, mask=ok, other=0.0).to(ACC) - cz
                dist = tl.minimum(tl.load(scratch + at, mask=ok, other=-1.0), dx * dx + dy * dy + dz * dz)
                tl.store(scratch + at, dist, mask=ok)
                top, top_at = tl.max(dist, axis=0, return_indices=True, return_indices_tie_break_left=True)
                better = top > best  # strictly: an earlier tile keeps equal maxima
                best_at = tl.where(better, t + top_at.to(tl.int64), best_at)
                best = tl.maximum(best, top)
            far = best_at


def _num_warps(block_n: int) -> int:
    """Warps for a block of ``block_n`` lanes: about :data:`POINTS_PER_THREAD` points per thread, 4 to 16 warps
    (4 up to 2048 points, 8 at 4096, 16 from 8192)."""
    return max(4, min(16, block_n // (32 * POINTS_PER_THREAD)))


def triton_farthest_point_sample(pos: Tensor, m: int, start: Tensor, *, block: int | None = None,
                                 validate: bool = True) -> Tensor:
    """Farthest point sampling of ``m`` indices per cloud from ``start``, in one kernel launch.

    The same indices as ``models.ops.farthest_point_sample(pos, m, method="exact", start=start)`` for float32 and
    float64 ``pos`` (float16/bfloat16: as the reference on the values upcast to float32), ties to the lowest index.

    ``block``: clouds of up to ``block`` points (a power of two; default :data:`MAX_BLOCK_N`, or
    :data:`MAX_BLOCK_N_F64` for float64) stay in registers; larger ones are swept in tiles of ``block`` points with
    the running distances in a global scratch buffer ``[B, N]`` (float32, or float64 for float64).

    ``validate=False`` skips the checks that read values (``start`` within ``[0, N)``, finite coordinates: each a
    device-to-host sync); the shape checks always run.

    Shapes:
        pos: ``[B, N, 3]`` float32, float16, bfloat16 or float64; start: ``[B]`` integer, on ``pos``'s device.
        returns ``[B, m]`` long.
    """
    if pos.dim() != 3 or pos.shape[-1] != 3:
        raise ValueError(f"pos must have shape [B, N, 3], got {tuple(pos.shape)}")
    if pos.dtype not in _DTYPES:
        raise ValueError(f"pos must be float32, float16, bfloat16 or float64, got {pos.dtype}")
    B, N, _ = pos.shape
    if not 1 <= m <= N:
        raise ValueError(f"cannot sample m={m} points from N={N}: need 1 <= m <= N")
    if start.shape != (B,) or start.dtype.is_floating_point or start.dtype.is_complex or start.dtype == torch.bool:
        raise ValueError(f"start must be integer indices of shape [B]=[{B}], got {tuple(start.shape)} {start.dtype}")
    if start.device != pos.device:
        raise ValueError(f"start is on {start.device} but pos on {pos.device}")
    acc = torch.float64 if pos.dtype == torch.float64 else torch.float32
    if block is None:
        block = MAX_BLOCK_N_F64 if acc == torch.float64 else MAX_BLOCK_N
    if block < 16 or block & (block - 1):
        raise ValueError(f"block={block} must be a power of two, at least 16")
    if N >= 2**31:
        raise ValueError(f"N={N} points per cloud: at most 2^31 - 1 (int32 lanes)")
    if validate:
        if not bool(((start >= 0) & (start < N)).all()):
            raise ValueError(f"start must lie in [0, N={N}), got values from {int(start.min())} to {int(start.max())}")
        if not bool(torch.isfinite(pos).all()):
            raise ValueError("pos contains NaN or infinite coordinates")
    if B == 0:
        return torch.empty(0, m, dtype=torch.long, device=pos.device)
    planes = pos.transpose(1, 2).contiguous()  # [B, 3, N]: each coordinate's loads coalesced
    start = start.to(torch.long).contiguous()
    out = torch.empty(B, m, dtype=torch.long, device=pos.device)
    tiled = N > block
    block_n = block if tiled else max(16, triton.next_power_of_2(N))
    scratch = torch.full((B, N), float("inf"), dtype=acc, device=pos.device) if tiled else out  # unused if not tiled
    _fps_kernel[(B,)](planes, start, out, scratch, N, m, BLOCK_N=block_n, TILED=tiled, F64=acc == torch.float64,
                      num_warps=_num_warps(block_n), enable_fp_fusion=False)
    return out
