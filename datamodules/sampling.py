"""Farthest-point orderings on the data side: fixed-N resampling (once, at cache-build time) and the FPS
order every sample is delivered in (docs/batch.md).

FPS here is ``fpsample.fps_sampling`` (exact FPS in C++, 10–50× faster than the pure-torch loop on CPU),
started like the model's reference ``models.ops.farthest_point_sample`` at the point farthest from the
cloud's mean, so both return the same indices (tests/datamodules/test_sampling.py).

``fps`` resampling keeps the first N points of that order; ``random`` draws a seeded subset. Clouds with
fewer than ``num_points`` points keep all their points and are padded with seeded random repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import fpsample
import numpy as np

Sampling = Literal["fps", "random"]
#: Clouds handled together while building a cache.
FPS_CHUNK = 64


def fps_order(pos: np.ndarray, m: int | None = None) -> np.ndarray:
    """A permutation of the N points whose first ``m`` entries (default all) are in farthest-point order.

    FPS starts at the point farthest from the cloud's mean (order-independent up to exact ties). Points at
    distance zero from the chosen set (duplicates) come last, in their original order, as does everything
    after the first ``m``. By FPS's prefix property, the first M' <= M entries are an FPS of the first M
    (started at the same point): one order serves every stage of the backbone (docs/operator.md §2).

    Shapes:
        pos: ``[N, >=3]``; returns ``[N]`` int64.
    """
    n = len(pos)
    m = n if m is None else min(m, n)
    p = np.ascontiguousarray(pos[:, :3], dtype=np.float32)
    start = int(np.square(p - p.mean(axis=0)).sum(axis=1).argmax())
    picked = fpsample.fps_sampling(p, m, start_idx=start).astype(np.int64)
    _, first = np.unique(picked, return_index=True)  # fpsample repeats indices once only duplicates are left
    head = picked[np.sort(first)]
    rest = np.setdiff1d(np.arange(n), head, assume_unique=True)  # ascending: the original order
    return np.concatenate([head, rest])


def select_points(
    clouds: Sequence[np.ndarray], num_points: int, method: Sampling, rng: np.random.Generator
) -> np.ndarray:
    """Indices ``[len(clouds), num_points]`` int64 choosing ``num_points`` points of each ``[N_i, >=3]`` cloud."""
    if method not in ("fps", "random"):
        raise ValueError(f"unknown sampling {method!r}: expected 'fps' or 'random'")
    out = np.empty((len(clouds), num_points), dtype=np.int64)
    for i, c in enumerate(clouds):
        n = len(c)
        if n <= num_points:
            out[i] = np.concatenate([np.arange(n), rng.integers(0, n, num_points - n)])
        elif method == "random":
            out[i] = rng.choice(n, num_points, replace=False)
        else:
            out[i] = fps_order(c, num_points)[:num_points]
    return out
