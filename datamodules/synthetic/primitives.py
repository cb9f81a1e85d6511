"""Triangle-mesh primitives (box, frustum/cylinder/cone, ellipsoid, tube arc), built along y (the up axis)."""

from __future__ import annotations

import numpy as np

Mesh = tuple[np.ndarray, np.ndarray]  # vertices [V, 3] float64, triangles [F, 3] int64
#: Segments around round primitives: enough for smooth-looking samples, few triangles.
SEGMENTS = 16


def box(center: tuple[float, float, float], size: tuple[float, float, float]) -> Mesh:
    """Axis-aligned box (12 triangles)."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    v = corners * np.asarray(size) + np.asarray(center)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))]
    return v, np.asarray(f, dtype=np.int64)


def frustum(
    center: tuple[float, float, float], r_bottom: float, r_top: float, height: float, axis: str = "y", caps: bool = True
) -> Mesh:
    """Cylinder (equal radii), cone (``r_top=0``) or truncated cone about ``axis``, centred at ``center``."""
    t = np.linspace(0, 2 * np.pi, SEGMENTS, endpoint=False)
    ring = np.stack([np.cos(t), np.zeros_like(t), np.sin(t)], 1)
    bottom = ring * r_bottom + [0, -height / 2, 0]
    top = ring * r_top + [0, height / 2, 0]
    v = np.concatenate([bottom, top, [[0, -height / 2, 0], [0, height / 2, 0]]])
    i, j = np.arange(SEGMENTS), (np.arange(SEGMENTS) + 1) % SEGMENTS
    f = [np.stack([i, j, j + SEGMENTS], 1), np.stack([i, j + SEGMENTS, i + SEGMENTS], 1)]
    if caps:
        f += [np.stack([np.full_like(i, 2 * SEGMENTS), j, i], 1),
              np.stack([np.full_like(i, 2 * SEGMENTS + 1), i + SEGMENTS, j + SEGMENTS], 1)]
    f = np.concatenate(f).astype(np.int64)
    if axis != "y":  # _orient swaps two coordinates (a reflection): keep the winding outward
        f = f[:, ::-1].copy()
    return _orient(v, axis) + np.asarray(center), f


def ellipsoid(center: tuple[float, float, float], radii: tuple[float, float, float]) -> Mesh:
    """UV-sphere ellipsoid."""
    rows = SEGMENTS // 2
    phi = np.linspace(0, np.pi, rows + 1)[1:-1]
    t = np.linspace(0, 2 * np.pi, SEGMENTS, endpoint=False)
    ring = np.stack([np.outer(np.sin(phi), np.cos(t)), np.outer(np.cos(phi), np.ones_like(t)),
                     np.outer(np.sin(phi), np.sin(t))], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]) * np.asarray(radii) + np.asarray(center)
    f = []
    for s in range(SEGMENTS):
        n = (s + 1) % SEGMENTS
        f.append((0, 1 + n, 1 + s))
        for r in range(rows - 2):
            a, b = 1 + r * SEGMENTS, 1 + (r + 1) * SEGMENTS
            f += [(a + s, a + n, b + n), (a + s, b + n, b + s)]
        last = 1 + (rows - 2) * SEGMENTS
        f.append((len(v) - 1, last + s, last + n))
    return v, np.asarray(f, dtype=np.int64)


def tube_arc(center: tuple[float, float, float], radius: float, thickness: float, angle: float) -> Mesh:
    """A tube of radius ``thickness`` along a circular arc of ``angle`` radians in the x-y plane (a mug handle)."""
    ts = np.linspace(-angle / 2, angle / 2, SEGMENTS)
    u = np.linspace(0, 2 * np.pi, SEGMENTS // 2, endpoint=False)
    rr = radius + thickness * np.cos(u)[None, :]
    v = np.stack([rr * np.cos(ts)[:, None], rr * np.sin(ts)[:, None],
                  np.broadcast_to(thickness * np.sin(u), (SEGMENTS, len(u)))], -1).reshape(-1, 3)
    m = SEGMENTS // 2
    f = []
    for a in range(SEGMENTS - 1):
        for b in range(m):
            p, q = a * m + b, a * m + (b + 1) % m
            f += [(p, q, q + m), (p, q + m, p + m)]
    return v + np.asarray(center), np.asarray(f, dtype=np.int64)


def _orient(v: np.ndarray, axis: str) -> np.ndarray:
    """Turn a y-axis primitive to lie along ``axis``."""
    if axis == "y":
        return v
    if axis == "x":
        return v[:, [1, 0, 2]]
    if axis == "z":
        return v[:, [0, 2, 1]]
    raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
