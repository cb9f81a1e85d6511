"""Readers of the two ShapeNetPart layouts (``docs/formats.md`` §4): the ``_v0_normal`` txt layout and
the ``hdf5_data`` variant. Both stream a split as ``(points [N, 7 or 4] = xyz[, normals], part, category)``.

The part table is the fixed 16-category / 50-part table of the real data, unless a ``part_table.json`` lies next
to the data (the generated data set writes one), so the table always travels with its data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from datamodules.errors import DataFormatError
from datamodules.io import check_cloud, read_h5_arrays, read_table
from datamodules.modelnet_formats import MissingPolicy, h5_split_files, handle_missing
from datamodules.tables import SHAPENETPART_TABLE, PartTable

log = logging.getLogger(__name__)
Split = Literal["train", "val", "test"]
PART_TABLE_FILE = "part_table.json"


def detect_shapenet_format(root: Path) -> str | None:
    """``txt`` or ``hdf5`` from the files in ``root``; ``None`` if neither fits."""
    if (root / "synsetoffset2category.txt").is_file() or (root / "train_test_split").is_dir():
        return "txt"
    if any(root.glob("ply_data_*.h5")):
        return "hdf5"
    return None


def load_part_table(root: Path) -> PartTable:
    """The part table written next to the data, or the real ShapeNetPart table."""
    path = root / PART_TABLE_FILE
    if not path.is_file():
        return SHAPENETPART_TABLE
    try:
        return PartTable.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as e:
        raise DataFormatError(path, f"unreadable part table ({e})") from None


def check_parts(where: str, part: np.ndarray, category: int, table: PartTable) -> np.ndarray:
    """Integer part ids as int64, or an error naming the first id outside 0..P-1 or outside its category."""
    ids = part.astype(np.int64)
    if (ids != part).any():
        raise DataFormatError(where, f"non-integer part label {part[ids != part][0]}")
    if ((ids < 0) | (ids >= table.num_parts)).any():
        bad = ids[(ids < 0) | (ids >= table.num_parts)][0]
        raise DataFormatError(where, f"part label {bad} outside 0..{table.num_parts - 1}")
    allowed = table.categories[category].parts
    foreign = ~np.isin(ids, allowed)
    if foreign.any():
        cat = table.categories[category]
        raise DataFormatError(
            where, f"part label {ids[foreign][0]} does not belong to {cat.name} (parts {list(allowed)})"
        )
    return ids


class TxtSegSource:
    """``<synset>/<model_id>.txt`` (x y z nx ny nz part) listed by ``train_test_split/shuffled_*_file_list.json``."""

    has_normals = True

    def __init__(self, root: Path, table: PartTable, selected: list[int], missing: MissingPolicy = "error") -> None:
        self.root, self.table, self.missing = root, table, missing
        self.synsets = {table.categories[i].synset: i for i in selected}
        mapping = root / "synsetoffset2category.txt"
        if mapping.is_file():
            tokens = mapping.read_text(encoding="utf-8").split()  # copies without a final newline exist
            known = table.by_synset()
            foreign = [s for s in tokens[1::2] if s not in known]
            if foreign:
                log.warning("%s: ignoring synsets %s not in the part table", mapping, foreign)

    def _items(self, split: Split) -> list[tuple[Path, int]]:
        lst = self.root / "train_test_split" / f"shuffled_{split}_file_list.json"
        if not lst.is_file():
            raise DataFormatError(lst, "split list not found")
        try:
            entries = json.loads(lst.read_text(encoding="utf-8"))
        except ValueError as e:
            raise DataFormatError(lst, f"not valid JSON ({e})") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise DataFormatError(lst, "expected a JSON array of 'shape_data/<synset>/<model_id>' strings")
        items, missing = [], []
        for entry in entries:
            parts = entry.strip("/").split("/")
            if len(parts) < 2:
                raise DataFormatError(lst, f"entry {entry!r} is not 'shape_data/<synset>/<model_id>'")
            synset, model_id = parts[-2], parts[-1]
            if synset in self.synsets:
                path = self.root / synset / f"{model_id}.txt"
                (items if path.is_file() else missing).append((path, self.synsets[synset]))
        handle_missing([(p, lst.name) for p, _ in missing], self.missing)
        return items

    def files(self, split: Split) -> list[Path]:
        return [p for p, _ in self._items(split)]

    def clouds(self, split: Split) -> Iterator[tuple[np.ndarray, int]]:
        for path, category in self._items(split):
            a = read_table(path)
            if a.shape[1] != 7:
                raise DataFormatError(path, f"expected 7 columns x y z nx ny nz part, got {a.shape[1]}")
            check_cloud(path, a[:, :3], a[:, 3:6])
            check_parts(str(path), a[:, 6], category, self.table)
            yield a, category


class H5SegSource:
    """``hdf5_data/ply_data_{train,val,test}<k>.h5`` with ``data`` [B,N,3], ``label`` (category) [B,1], ``pid``
    [B,N]."""

    def __init__(self, root: Path, table: PartTable, selected: list[int], missing: MissingPolicy = "error") -> None:
        self.root, self.table, self.selected, self.missing = root, table, set(selected), missing
        first = next(iter(self.files("train") or self.files("test")), None)
        self.has_normals = first is not None and "normal" in read_h5_arrays(first, (), ("normal",))

    def files(self, split: Split) -> list[Path]:
        return h5_split_files(self.root, split, f"{split}_hdf5_file_list.txt", self.missing)

    def clouds(self, split: Split) -> Iterator[tuple[np.ndarray, int]]:
        for path in self.files(split):
            a = read_h5_arrays(path, ("data", "label", "pid"), ("normal",))
            data, cat, pid = a["data"].astype(np.float32), a["label"].reshape(-1).astype(np.int64), a["pid"]
            if data.ndim != 3 or len(cat) != len(data) or pid.shape != data.shape[:2]:
                raise DataFormatError(
                    path, f"'data' {list(data.shape)}, 'label' {len(cat)}, 'pid' {list(pid.shape)} disagree"
                )
            bad = (cat < 0) | (cat >= len(self.table.categories))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataFormatError(
                    f"{path}[{i}]", f"category label {cat[i]} outside 0..{len(self.table.categories) - 1}"
                )
            for i in np.flatnonzero(np.isin(cat, list(self.selected))):
                where = f"{path}[{i}]"
                n = a["normal"][i].astype(np.float32) if self.has_normals else None
                check_cloud(where, data[i], n)
                part = check_parts(where, pid[i], int(cat[i]), self.table).astype(np.float32)[:, None]
                cols = [data[i]] + ([n] if n is not None else []) + [part]
                yield np.concatenate(cols, axis=1), int(cat[i])
