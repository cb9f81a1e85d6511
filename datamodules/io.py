"""Readers of single point-cloud files, used by the data set readers, the app's ``predict`` and the visualiser.

``read_points(path)`` reads ``.off`` (area-weighted surface sampling, with normals), ``.ply`` (point cloud or mesh),
``.txt``/``.csv``/``.pts`` (comma or space separated, 3, 6 or 7 columns: xyz, normals, label), ``.npy`` and ``.h5``.
Every reader checks what it read against the file's own header (vertex/face counts, array shape, dataset
shapes) and names a short file as *truncated*. Every error is a :class:`~datamodules.errors.DataFormatError`
naming the file and the problem. Formats and their quirks: ``docs/formats.md``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np
import plyfile

from datamodules.errors import DataFormatError
from datamodules.mesh import read_off, sample_surface

#: Points sampled from a mesh when the caller gives no count (as many as ``modelnet40_normal_resampled``).
DEFAULT_MESH_POINTS = 10_000
TEXT_SUFFIXES = (".txt", ".csv", ".pts", ".xyz")
MULTI_CLOUD_SUFFIXES = (".npy", ".h5", ".hdf5")


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


# ---------------------------------------------------------------------------------------------- text
def read_table(path: str | Path) -> np.ndarray:
    """A comma- or whitespace-separated numeric table ``[rows, cols]`` float32 (no header).

    A text table has no header to check against, so the one sign of truncation it can carry is a short
    last line: that is reported as truncation, a short line elsewhere as a ragged table.
    """
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
            if no == rows[-1][0] and len(r) < len(first):
                raise DataFormatError(
                    path,
                    f"truncated: the last line (line {no}) has {len(r)} of the {len(first)} values of every other line",
                )
            raise DataFormatError(path, f"line {no}: {len(r)} columns, but the first line has {len(first)}")
        for t in r:
            try:
                float(t)
            except ValueError:
                raise DataFormatError(path, f"line {no}: non-numeric token {t!r}") from None
    raise DataFormatError(path, "unreadable numeric table")


def _split_columns(path: str | Path, a: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if a.ndim != 2 or a.shape[1] not in (3, 6, 7):
        raise DataFormatError(path, f"expected 3, 6 or 7 columns (xyz, normals, label), got shape {list(a.shape)}")
    return a[:, :3], (a[:, 3:6] if a.shape[1] >= 6 else None)


# ---------------------------------------------------------------------------------------------- npy
def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype an ``.npy`` header declares; refuses object (pickled) arrays and short files."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise DataFormatError(path, f"not a valid .npy file ({e})") from None
    if dtype.hasobject:
        raise DataFormatError(
            path,
            "refused: it holds pickled Python objects, and unpickling can run code; save a plain numeric array instead",
        )
    expected = int(np.prod(shape)) * dtype.itemsize
    present = path.stat().st_size - offset
    if present < expected:
        raise DataFormatError(
            path, f"truncated: the header declares an array {list(shape)} of {expected} bytes, {present} are present"
        )
    return shape, dtype


def _read_npy(path: Path, index: int | None) -> np.ndarray:
    shape, _ = _npy_header(path)
    a = np.load(path, allow_pickle=False, mmap_mode="r")
    if len(shape) == 3:
        a = a[_pick(path, shape[0], index)]
    return np.asarray(a, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- h5
def read_h5_arrays(path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Required and optional datasets of an h5 file, with a clear error when one is missing or the file is cut short."""
    try:
        with h5py.File(path, "r") as f:
            absent = [k for k in keys if k not in f]
            if absent:
                raise DataFormatError(path, f"HDF5 file lacks dataset(s) {absent} (has {sorted(f.keys())})")
            return {k: np.asarray(f[k]) for k in keys + optional if k in f}
    except OSError as e:
        raise _h5_error(path, e) from None


def _h5_error(path: Path, e: OSError) -> DataFormatError:
    """HDF5 compares the end-of-file address its superblock stores with the file's size: say truncation plainly."""
    if "truncated file" in str(e):
        return DataFormatError(path, f"truncated: the HDF5 header records a longer file ({e})")
    return DataFormatError(path, f"not a readable HDF5 file ({e})")


def _h5_num_clouds(path: Path) -> int:
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise DataFormatError(path, f"HDF5 file has no 'data' dataset (keys: {sorted(f.keys())})")
            return int(f["data"].shape[0]) if f["data"].ndim == 3 else 1
    except OSError as e:
        raise _h5_error(path, e) from None


def _read_h5(path: Path, index: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    i = _pick(path, _h5_num_clouds(path), index)
    a = read_h5_arrays(path, ("data",), ("normal",))
    data, normal = a["data"], a.get("normal")
    if normal is not None and normal.shape != data.shape:
        raise DataFormatError(path, f"'normal' {list(normal.shape)} does not match 'data' {list(data.shape)}")
    if data.ndim == 3:
        data, normal = data[i], None if normal is None else normal[i]
    return data.astype(np.float32), None if normal is None else normal.astype(np.float32)


def _pick(path: Path, count: int, index: int | None) -> int:
    if index is None:
        if count != 1:
            raise DataFormatError(path, f"holds {count} clouds: read each with index=0..{count - 1}")
        return 0
    if not 0 <= index < count:
        raise DataFormatError(path, f"cloud index {index} out of range: the file holds {count}")
    return index


def count_clouds(path: str | Path) -> int:
    """How many clouds a file holds: ``B`` of an ``[B, N, C]`` ``.npy``/``.h5``, else 1 (headers only)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in MULTI_CLOUD_SUFFIXES:
        return 1
    if suffix == ".npy":
        shape, _ = _npy_header(path)
        return shape[0] if len(shape) == 3 else 1
    return _h5_num_clouds(path)


# ---------------------------------------------------------------------------------------------- ply
def _read_ply(path: Path, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A PLY cloud (``vertex`` x, y, z[, nx, ny, nz]) or mesh (plus ``face`` vertex_indices), read strictly by
    plyfile."""
    try:
        ply = plyfile.PlyData.read(str(path))
    except plyfile.PlyElementParseError as e:
        problem = f"truncated: {e}" if "early end-of-file" in str(e) else str(e)
        raise DataFormatError(path, problem) from None
    except (plyfile.PlyHeaderParseError, ValueError, OSError) as e:
        raise DataFormatError(path, f"not a valid PLY file ({e})") from None
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise DataFormatError(path, f"PLY file has no 'vertex' element (has {names})")
    vertex = ply["vertex"].data
    fields = vertex.dtype.names or ()
    if not {"x", "y", "z"} <= set(fields):
        raise DataFormatError(path, f"PLY vertices lack x, y, z properties (have {list(fields)})")
    pos = np.stack([vertex[c] for c in "xyz"], axis=1).astype(np.float64)
    if "face" in names and len(ply["face"].data) > 0:
        faces = ply["face"].data
        key = next((k for k in ("vertex_indices", "vertex_index") if k in (faces.dtype.names or ())), None)
        if key is None:
            raise DataFormatError(path, f"PLY faces lack a vertex_indices list (have {list(faces.dtype.names or ())})")
        triangles = _fan(path, faces[key], len(pos))
        return _sample(path, pos, triangles, num_points, seed)
    normal = np.stack([vertex[c] for c in ("nx", "ny", "nz")], axis=1) if {"nx", "ny", "nz"} <= set(fields) else None
    return pos.astype(np.float32), None if normal is None else normal.astype(np.float32)


def _fan(path: Path, polygons: np.ndarray, num_vertices: int) -> np.ndarray:
    """Fan-triangulate PLY face lists into ``[F, 3]`` int64, checking every index against the vertex count."""
    triangles = [[p[0], p[j], p[j + 1]] for p in polygons for j in range(1, len(p) - 1)]
    t = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if len(t) and (t.min() < 0 or t.max() >= num_vertices):
        raise DataFormatError(
            path, f"a face uses vertex {int(t.max())}, but the header declares {num_vertices} vertices"
        )
    return t


def _sample(path: Path, v: np.ndarray, f: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        pos, normal, _ = sample_surface(v, f, n, np.random.default_rng(file_seed(path, seed)))
    except ValueError as e:
        raise DataFormatError(path, str(e)) from None
    return pos, normal


# ---------------------------------------------------------------------------------------------- entry
def read_points(
    path: str | Path, num_points: int = DEFAULT_MESH_POINTS, seed: int = 0, index: int | None = None
) -> dict[str, np.ndarray | None]:
    """Read one point cloud from a file.

    Args:
        path: an ``.off``/``.ply`` mesh, a ``.ply`` cloud, a text table, an ``.npy`` array or an ``.h5`` file.
        num_points: points sampled from a mesh (area-weighted); clouds are returned as stored.
        seed: base seed of the mesh sampling (combined with the file name).
        index: which cloud of a multi-cloud ``.h5``/``.npy`` file ``[B, N, C]`` (see :func:`count_clouds`).

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
        pos, normal = _split_columns(path, _read_npy(path, index))
    elif suffix in (".h5", ".hdf5"):
        pos, normal = _read_h5(path, index)
    else:
        raise DataFormatError(path, f"unknown point-cloud file type {suffix!r} (expected .off .ply .txt .npy .h5)")
    where = path if index is None else f"{path}[{index}]"
    check_cloud(where, pos, normal)
    return {"pos": np.ascontiguousarray(pos), "normal": None if normal is None else np.ascontiguousarray(normal)}
