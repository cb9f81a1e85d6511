"""Turn a stream of variable-size clouds into fixed-N, unit-sphere-normalised arrays (what the caches hold)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np

from datamodules.sampling import FPS_CHUNK, Sampling, fps_order, select_points
from datamodules.transforms import normalize_unit_sphere


def _chunks(it: Iterable, size: int) -> Iterator[list]:
    it = iter(it)
    while chunk := list(islice(it, size)):
        yield chunk


def build_fixed(
    clouds: Iterable[tuple[np.ndarray, int]], num_points: int, sampling: Sampling, seed: int
) -> dict[str, np.ndarray]:
    """Resample every ``(points [N_i, C], label)`` to ``num_points`` rows, normalise ``points[..., :3]`` and store
    the rows in farthest-point order (docs/batch.md §5).

    Returns:
        ``points [S, num_points, C]`` float32 and ``label [S]`` int64.
    """
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for chunk in _chunks(clouds, FPS_CHUNK):
        idx = select_points([c for c, _ in chunk], num_points, sampling, rng)
        for (c, label), row in zip(chunk, idx, strict=True):
            p = c[row].astype(np.float32)
            p[:, :3] = normalize_unit_sphere(p[:, :3])
            points.append(p[fps_order(p)])  # stored in FPS order: unaugmented samples need no reordering
            labels.append(label)
    if not points:
        raise ValueError("no samples to preprocess")
    return {"points": np.stack(points), "label": np.asarray(labels, dtype=np.int64)}
