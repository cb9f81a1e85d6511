"""Readers of the three ModelNet layouts (``docs/formats.md`` §1-3), behind one small interface.

Each source knows its class names, whether it has normals, the files a split reads (for cache fingerprints) and
streams a split as ``(points [N, 3 or 6] float32, label)``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from datamodules.errors import DataFormatError
from datamodules.io import check_cloud, file_seed, read_h5_arrays, read_table
from datamodules.mesh import read_off, sample_surface
from datamodules.tables import modelnet_classes

log = logging.getLogger(__name__)
MissingPolicy = Literal["error", "skip"]
Split = Literal["train", "test"]


class ModelNetSource(Protocol):
    class_names: list[str]
    has_normals: bool

    def files(self, split: Split) -> list[Path]: ...

    def clouds(self, split: Split) -> Iterator[tuple[np.ndarray, int]]: ...


def detect_modelnet_format(root: Path) -> str | None:
    """``normal_resampled``, ``ply_hdf5`` or ``off`` from the files in ``root``; ``None`` if none fits."""
    if any(root.glob("modelnet*_shape_names.txt")):
        return "normal_resampled"
    if any(root.glob("ply_data_*.h5")):
        return "ply_hdf5"
    if any(root.glob("*/train/*.off")) or any(root.glob("*/test/*.off")):
        return "off"
    return None


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a small text file (names, split lists)."""
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    return [s for s in (line.strip() for line in path.read_text(encoding="utf-8").splitlines()) if s]


def handle_missing(missing: list[tuple[Path, str]], policy: MissingPolicy) -> None:
    """Raise for (or warn about) files that a split list names but that do not exist."""
    if not missing:
        return
    path, listed_in = missing[0]
    if policy == "error":
        raise DataFormatError(
            path,
            f"listed in {listed_in} but missing ({len(missing)} listed files missing in all); "
            "set missing_files='skip' to skip them with a warning",
        )
    log.warning("skipping %d listed but missing files, e.g. %s (listed in %s)", len(missing), path, listed_in)


class ResampledSource:
    """``modelnet40_normal_resampled``: shape names, split lists of ids, ``<class>/<id>.txt`` with x,y,z,nx,ny,nz."""

    has_normals = True

    def __init__(self, root: Path, name: str = "40", missing: MissingPolicy = "error") -> None:
        self.root, self.name, self.missing = root, name, missing
        own = root / f"modelnet{name}_shape_names.txt"
        self.names_file = own if own.is_file() else root / "modelnet40_shape_names.txt"
        names = read_lines(self.names_file)
        if self.names_file != own:  # e.g. ModelNet10 from the 40-class files
            names = [n for n in names if n in modelnet_classes(name)]
        self.class_names = names

    def _items(self, split: Split) -> list[tuple[Path, int]]:
        own = self.root / f"modelnet{self.name}_{split}.txt"
        lst = own if own.is_file() else self.root / f"modelnet40_{split}.txt"
        labels = {n: i for i, n in enumerate(self.class_names)}
        items, missing = [], []
        for shape_id in read_lines(lst):
            cls = shape_id.rsplit("_", 1)[0]
            if cls not in labels:
                if lst == own:
                    raise DataFormatError(lst, f"{shape_id!r}: class {cls!r} is not in {self.names_file.name}")
                continue  # a 40-class list read for ModelNet10
            path = self.root / cls / f"{shape_id}.txt"
            (items if path.is_file() else missing).append((path, labels[cls]))
        handle_missing([(p, lst.name) for p, _ in missing], self.missing)
        return items

    def files(self, split: Split) -> list[Path]:
        return [p for p, _ in self._items(split)]

    def clouds(self, split: Split) -> Iterator[tuple[np.ndarray, int]]:
        for path, label in self._items(split):
            a = read_table(path)
            if a.shape[1] != 6:
                raise DataFormatError(path, f"expected 6 columns x,y,z,nx,ny,nz, got {a.shape[1]}")
            check_cloud(path, a[:, :3], a[:, 3:])
            yield a, label


class OffSource:
    """Raw meshes ``<class>/{train,test}/*.off``, sampled area-weighted to ``mesh_points`` points with normals."""

    has_normals = True

    def __init__(self, root: Path, name: str = "40", mesh_points: int = 10_000, seed: int = 0) -> None:
        self.root, self.mesh_points, self.seed = root, mesh_points, seed
        self.class_names = list(modelnet_classes(name))
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = [f for f in folders if f not in self.class_names and (root / f / "train").is_dir()]
        if name == "10":
            unknown = [f for f in unknown if f not in modelnet_classes("40")]  # ModelNet40 folders read as 10
        if unknown:
            raise DataFormatError(root / unknown[0], f"class folder not in the ModelNet{name} class table")

    def _items(self, split: Split) -> list[tuple[Path, int]]:
        return [
            (p, label)
            for label, cls in enumerate(self.class_names)
            for p in sorted((self.root / cls / split).glob("*.off"))
        ]

    def files(self, split: Split) -> list[Path]:
        return [p for p, _ in self._items(split)]

    def clouds(self, split: Split) -> Iterator[tuple[np.ndarray, int]]:
        for path, label in self._items(split):
            rng = np.random.default_rng(file_seed(path, self.seed))
            try:
                pos, normal, _ = sample_surface(*read_off(path), self.mesh_points, rng)
            except ValueError as e:
                if isinstance(e, DataFormatError):
                    raise
                raise DataFormatError(path, str(e)) from None
            yield np.concatenate([pos, normal], axis=1), label


def _natural(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def h5_split_files(root: Path, split: str, list_name: str, missing: MissingPolicy) -> list[Path]:
    """The h5 files of a split: from the list file (basename of each line) if present, else a glob."""
    lst = root / list_name
    if lst.is_file():
        files = [root / Path(line.replace("\\", "/")).name for line in read_lines(lst)]
        handle_missing([(f, lst.name) for f in files if not f.is_file()], missing)
        return [f for f in files if f.is_file()]
    return sorted(root.glob(f"ply_data_{split}*.h5"), key=_natural)


class PlyH5Source:
    """``modelnet40_ply_hdf5_2048``: ``ply_data_{split}<k>.h5`` with ``data``, ``label`` and optional ``normal``."""

    def __init__(self, root: Path, name: str = "40", missing: MissingPolicy = "error") -> None:
        if name != "40":
            raise ValueError("modelnet40_ply_hdf5_2048 holds ModelNet40 only: use name='40'")
        self.root, self.missing = root, missing
        names_file = root / "shape_names.txt"
        self.class_names = read_lines(names_file) if names_file.is_file() else list(modelnet_classes("40"))
        first = next(iter(self.files("train") or self.files("test")), None)
        self.has_normals = first is not None and "normal" in read_h5_arrays(first, (), ("normal",))

    def files(self, split: Split) -> list[Path]:
        return h5_split_files(self.root, split, f"{split}_files.txt", self.missing)

    def clouds(self, split: Split) -> Iterator[tuple[np.ndarray, int]]:
        for path in self.files(split):
            a = read_h5_arrays(path, ("data", "label"), ("normal",))
            data, label = a["data"].astype(np.float32), a["label"].reshape(-1).astype(np.int64)
            if data.ndim != 3 or data.shape[-1] != 3 or len(label) != len(data):
                raise DataFormatError(
                    path, f"'data' {list(data.shape)} / 'label' {len(label)}: expected [B, N, 3] / [B]"
                )
            bad = (label < 0) | (label >= len(self.class_names))
            if bad.any():
                raise DataFormatError(path, f"label {label[bad][0]} outside 0..{len(self.class_names) - 1}")
            normal = a.get("normal") if self.has_normals else None
            for i in range(len(data)):
                n = None if normal is None else normal[i].astype(np.float32)
                check_cloud(f"{path}[{i}]", data[i], n)
                yield (data[i] if n is None else np.concatenate([data[i], n], axis=1)), int(label[i])
