"""Fixed-N resampling of variable-size clouds, computed once (at cache-build time) in batches.

``fps`` uses the project's one pure-torch farthest point sampling (``models.ops.farthest_point_sample``);
``random`` draws a seeded subset. Clouds with fewer than ``num_points`` points keep all their points and are
padded with seeded random repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from models.ops import farthest_point_sample

Sampling = Literal["fps", "random"]
#: Clouds per FPS call: bounds the memory of the batched distance updates.
FPS_CHUNK = 64


def _fps_single_thread(pos: np.ndarray, num_points: int) -> np.ndarray:
    """FPS is a long loop of tiny ops: thread synchronisation dominates, so one thread is faster (4-10x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return farthest_point_sample(torch.from_numpy(pos), num_points).numpy()
    finally:
        torch.set_num_threads(threads)


def select_points(
    clouds: Sequence[np.ndarray], num_points: int, method: Sampling, rng: np.random.Generator
) -> np.ndarray:
    """Indices ``[len(clouds), num_points]`` int64 choosing ``num_points`` points of each ``[N_i, >=3]`` cloud."""
    if method not in ("fps", "random"):
        raise ValueError(f"unknown sampling {method!r}: expected 'fps' or 'random'")
    out = np.empty((len(clouds), num_points), dtype=np.int64)
    big = []
    for i, c in enumerate(clouds):
        n = len(c)
        if n <= num_points:
            out[i] = np.concatenate([np.arange(n), rng.integers(0, n, num_points - n)])
        elif method == "random":
            out[i] = rng.choice(n, num_points, replace=False)
        else:
            big.append(i)
    big.sort(key=lambda i: len(clouds[i]))  # similar sizes share a chunk: little padding
    for start in range(0, len(big), FPS_CHUNK):
        chunk = big[start : start + FPS_CHUNK]
        width = max(len(clouds[i]) for i in chunk)
        # pad each cloud to `width` with repeats of its own points: a repeat is never farther than its original
        pos = np.stack([clouds[i][np.arange(width) % len(clouds[i]), :3] for i in chunk])
        idx = _fps_single_thread(np.ascontiguousarray(pos, np.float32), num_points)
        for row, i in zip(idx, chunk, strict=True):
            out[i] = row % len(clouds[i])
    return out
