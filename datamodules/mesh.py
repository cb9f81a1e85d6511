"""Triangle meshes: a tolerant OFF parser and area-weighted surface sampling (points + face normals).

The OFF parser copes with every ModelNet quirk of ``docs/formats.md`` §1: the glued ``OFF<nv> <nf> <ne>``
header, trailing spaces, blank lines, a missing final newline, CRLF line ends, ``#`` comments, and polygons with
more than three corners (fan-triangulated, never dropped). ``torch_geometric.io.read_off`` is not used: it breaks
on CRLF and silently drops polygons with more than four corners.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.errors import DataFormatError


def _data_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, tokens) of every non-empty line, comments stripped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataFormatError(path, f"cannot read the file ({e.strerror})") from e
    out = []
    for no, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if tokens:
            out.append((no, tokens))
    return out


def _ints(path: Path, no: int, tokens: list[str], what: str) -> list[int]:
    try:
        return [int(t) for t in tokens]
    except ValueError:
        raise DataFormatError(path, f"line {no}: non-numeric token in {what}: {' '.join(tokens)!r}") from None


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an OFF mesh.

    Returns:
        vertices ``[V, 3]`` float64 and triangles ``[F, 3]`` int64 (polygons fan-triangulated).
    """
    path = Path(path)
    lines = _data_lines(path)
    if not lines or not lines[0][1][0].startswith("OFF"):
        raise DataFormatError(path, "not an OFF file: the first line must start with 'OFF'")
    no, head = lines[0]
    head = head[1:] if head[0] == "OFF" else [head[0][3:], *head[1:]]  # glued header 'OFF<nv> <nf> <ne>'
    body = lines[1:]
    if not head:  # counts on their own line
        if not body:
            raise DataFormatError(path, "truncated: no vertex/face counts after 'OFF'")
        (no, head), body = body[0], body[1:]
    if len(head) < 2:
        raise DataFormatError(path, f"line {no}: expected '<num_vertices> <num_faces> <num_edges>', got {head!r}")
    nv, nf = _ints(path, no, head[:2], "the header counts")
    if nv <= 0:
        raise DataFormatError(path, f"line {no}: the header declares {nv} vertices: empty mesh")
    if len(body) < nv + nf:
        raise DataFormatError(
            path, f"truncated: the header declares {nv} vertices and {nf} faces, but only {len(body)} data lines follow"
        )
    if len(body) > nv + nf:
        raise DataFormatError(
            path,
            f"{len(body) - nv - nf} lines after the {nv} vertices and {nf} faces the header declares "
            "(wrong vertex or face count in the header?)",
        )
    vertices = np.empty((nv, 3), dtype=np.float64)
    for i, (no, tokens) in enumerate(body[:nv]):
        try:
            vertices[i] = [float(t) for t in tokens[:3]]
        except ValueError:
            raise DataFormatError(path, f"line {no}: non-numeric vertex coordinate in {' '.join(tokens)!r}") from None
        if len(tokens) < 3:
            raise DataFormatError(path, f"line {no}: a vertex needs 3 coordinates, got {' '.join(tokens)!r}")
    if not np.isfinite(vertices).all():
        bad = int(np.flatnonzero(~np.isfinite(vertices).all(1))[0])
        raise DataFormatError(path, f"line {body[bad][0]}: NaN or infinite vertex coordinate")
    triangles: list[list[int]] = []
    for no, tokens in body[nv:]:
        row = _ints(path, no, tokens, "a face")
        k = row[0]
        if no == body[-1][0] and 3 <= k >= len(row):
            raise DataFormatError(
                path, f"truncated: the last face (line {no}) declares {k} corners, {len(row) - 1} are present"
            )
        if k < 3 or len(row) < k + 1:
            raise DataFormatError(path, f"line {no}: a face needs 'k i1 .. ik' with k >= 3, got {' '.join(tokens)!r}")
        idx = row[1 : k + 1]
        if min(idx) < 0 or max(idx) >= nv:
            raise DataFormatError(
                path, f"line {no}: vertex index {max(idx)} out of range for {nv} vertices (wrong vertex count?)"
            )
        triangles.extend([idx[0], idx[j], idx[j + 1]] for j in range(1, k - 1))  # fan triangulation
    return vertices, np.asarray(triangles, dtype=np.int64).reshape(-1, 3)


def sample_surface(
    vertices: np.ndarray, triangles: np.ndarray, num_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample ``num_points`` points uniformly by area on a triangle mesh.

    Returns:
        pos ``[num_points, 3]`` float32, normal ``[num_points, 3]`` float32 (unit face normals, winding order)
        and the index ``[num_points]`` int64 of the triangle each point lies on.
    Raises:
        ValueError if the mesh has no surface area.
    """
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    cross = np.cross(b - a, c - a)  # (F, 3), |cross| = 2 * area
    area = np.linalg.norm(cross, axis=1)
    total = area.sum()
    if not total > 0:
        raise ValueError("the mesh has no surface area (no faces, or only degenerate ones)")
    face = rng.choice(len(area), size=num_points, p=area / total)
    u, v = rng.random((2, num_points, 1))
    flip = (u + v) > 1  # reflect into the triangle
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    pos = a[face] + u * (b - a)[face] + v * (c - a)[face]
    normal = cross[face] / area[face, None]
    return pos.astype(np.float32), normal.astype(np.float32), face
