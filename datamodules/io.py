"""Readers of single point-cloud files, used by the data set readers, the app's ``predict`` and the visualiser.

``read_points(path)`` reads ``.off`` (area-weighted surface sampling, with normals), ``.ply`` (point cloud or mesh),
``.txt``/``.csv``/``.pts`` (comma or space separated, 3, 6 or 7 columns: xyz, normals, label), ``.npy`` and ``.h5``.
Every error is a :class:`~datamodules.errors.DataFormatError` naming the file and the problem.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np

from datamodules.errors import DataFormatError
from datamodules.mesh import read_off, sample_surface

#: Points sampled from a mesh when the caller gives no count (as many as ``modelnet40_normal_resampled``).
DEFAULT_MESH_POINTS = 10_000
TEXT_SUFFIXES = (".txt", ".csv", ".pts", ".xyz")


def file_seed(path: str | Path, seed: int) -> int:
    """A seed derived from a file's name and a base seed, so mesh sampling is reproducible per file."""
    return zlib.crc32(f"{Path(path).name}:{seed}".encode())


def check_cloud(path: str | Path, pos: np.ndarray, normal: np.ndarray | None = None) -> None:
    """Raise a DataFormatError if the cloud is empty, not ``[N, 3]``, or holds NaN/inf values."""
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise DataFormatError(path, f"expected points of shape [N, 3], got {list(pos.shape)}")
    if len(pos) == 0:
        raise DataFormatError(path, "empty point cloud (0 points)")
    for name, a in (("coordinates", pos), ("normals", normal)):
        if a is not None and not np.isfinite(a).all():
            row = int(np.flatnonzero(~np.isfinite(a).all(1))[0])
            raise DataFormatError(path, f"NaN or infinite {name} (first at point {row})")


def read_table(path: str | Path) -> np.ndarray:
    """A comma- or whitespace-separated numeric table ``[rows, cols]`` float32 (no header)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataFormatError(path, f"cannot read the file ({e.strerror})") from e
    text = text.replace(",", " ")
    first = next((line.split() for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise DataFormatError(path, "empty point cloud (no data lines)")
    tokens = text.split()
    try:  # fast path; the slow path below only runs to locate an error
        a = np.array(tokens, dtype=np.float32)
        if len(tokens) % len(first) == 0:
            return a.reshape(-1, len(first))
    except ValueError:
        pass
    rows = [(no, line.split()) for no, line in enumerate(text.splitlines(), start=1) if line.strip()]
    for no, r in rows:
        if len(r) != len(first):
            raise DataFormatError(path, f"line {no}: {len(r)} columns, but the first line has {len(first)}")
        for t in r:
            try:
                float(t)
            except ValueError:
                raise DataFormatError(path, f"line {no}: non-numeric token {t!r}") from None
    raise DataFormatError(path, "unreadable numeric table")


def _split_columns(path: Path, a: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if a.ndim != 2 or a.shape[1] not in (3, 6, 7):
        raise DataFormatError(path, f"expected 3, 6 or 7 columns (xyz, normals, label), got shape {list(a.shape)}")
    return a[:, :3], (a[:, 3:6] if a.shape[1] >= 6 else None)


def _read_h5(path: Path, index: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise DataFormatError(path, f"HDF5 file has no 'data' dataset (keys: {sorted(f.keys())})")
            data, normal = f["data"], f.get("normal")
            if data.ndim == 3:
                if index is None and data.shape[0] != 1:
                    raise DataFormatError(path, f"holds {data.shape[0]} clouds: pass index= to pick one")
                i = index or 0
                return np.asarray(data[i], np.float32), None if normal is None else np.asarray(normal[i], np.float32)
            return np.asarray(data, np.float32), None if normal is None else np.asarray(normal, np.float32)
    except OSError as e:
        raise DataFormatError(path, f"not a readable HDF5 file ({e})") from e


def _read_ply(path: Path, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    import open3d as o3d  # heavy import, only for .ply

    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) > 0:
        return _sample(path, np.asarray(mesh.vertices), np.asarray(mesh.triangles), num_points, seed)
    cloud = o3d.io.read_point_cloud(str(path))
    pos = np.asarray(cloud.points, dtype=np.float32)
    if len(pos) == 0:
        raise DataFormatError(path, "no points read (empty, or not a valid PLY file)")
    return pos, np.asarray(cloud.normals, dtype=np.float32) if cloud.has_normals() else None


def _sample(path: Path, v: np.ndarray, f: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        pos, normal, _ = sample_surface(v, f, n, np.random.default_rng(file_seed(path, seed)))
    except ValueError as e:
        raise DataFormatError(path, str(e)) from None
    return pos, normal


def read_points(
    path: str | Path, num_points: int = DEFAULT_MESH_POINTS, seed: int = 0, index: int | None = None
) -> dict[str, np.ndarray | None]:
    """Read one point cloud from a file.

    Args:
        path: an ``.off``/``.ply`` mesh, a ``.ply`` cloud, a text table, an ``.npy`` array or an ``.h5`` file.
        num_points: points sampled from a mesh (area-weighted); clouds are returned as stored.
        seed: base seed of the mesh sampling (combined with the file name).
        index: which cloud of a multi-cloud ``.h5``/``.npy`` file ``[B, N, C]``.

    Returns:
        ``dict(pos=float32 [N, 3], normal=float32 [N, 3] or None)``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".off":
        pos, normal = _sample(path, *read_off(path), num_points, seed)
    elif suffix == ".ply":
        pos, normal = _read_ply(path, num_points, seed)
    elif suffix in TEXT_SUFFIXES:
        pos, normal = _split_columns(path, read_table(path))
    elif suffix == ".npy":
        a = np.load(path, allow_pickle=False).astype(np.float32)
        if a.ndim == 3:
            a = a[index or 0]
        pos, normal = _split_columns(path, a)
    elif suffix in (".h5", ".hdf5"):
        pos, normal = _read_h5(path, index)
    else:
        raise DataFormatError(path, f"unknown point-cloud file type {suffix!r} (expected .off .ply .txt .npy .h5)")
    check_cloud(path, pos, normal)
    return {"pos": np.ascontiguousarray(pos), "normal": None if normal is None else np.ascontiguousarray(normal)}
