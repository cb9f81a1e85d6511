"""``ShapeNetPartDataModule``: part segmentation from the ``_v0_normal`` txt layout, the ``hdf5_data`` variant or
the generated default data set (written in the txt layout with its own ``part_table.json``).

Splits: the official train / val / test lists. Part ids are always global; for the real data the table is the
fixed 16 categories / 50 parts even when ``categories`` selects a subset (so metrics and heads do not change).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from datamodules.base import PointCloudDataModule
from datamodules.download import ARCHIVES, download_and_extract
from datamodules.modelnet_formats import MissingPolicy
from datamodules.sampling import Sampling
from datamodules.shapenet_formats import H5SegSource, TxtSegSource, detect_shapenet_format, load_part_table
from datamodules.synthetic import PART_TABLE as GENERATED_TABLE
from datamodules.synthetic import GeneratorConfig
from datamodules.tables import SHAPENETPART_TABLE, PartTable
from datamodules.transforms import Augment

ShapeNetFormat = Literal["auto", "txt", "hdf5", "generated"]


class ShapeNetPartDataModule(PointCloudDataModule):
    """ShapeNetPart segmentation. Batches: ``pos``, ``normal`` (if ``use_normals``), ``part``, ``category``, ``index``.

    Args:
        root: the data set folder (or, for ``generated``, where it is generated).
        format: ``txt``, ``hdf5``, ``generated`` or ``auto`` (detected from ``root``).
        categories: category names to use (``None``: all); ids stay global.
        num_points, use_normals, sampling, batch_size, num_workers, download, augment, seed, missing_files,
        cache_dir, generator, predict_files, fps_order, data_seed: as in ``ModelNetDataModule``.
        predict_category: the object category (name) of the ``predict_files``.

    Attributes (available right after ``__init__``): ``num_parts``, ``num_categories``, ``category_names``,
    ``part_mask`` (bool ``[num_categories, num_parts]``), ``in_channels``.
    """

    family = "ShapeNetPart"
    kind = "shapenetpart"
    splits = ("train", "val", "test")
    expected_files = "synsetoffset2category.txt + train_test_split/, or ply_data_*.h5"
    empty_split_hint = " for the selected categories"

    def __init__(
        self,
        root: str = "data/generated_shapenetpart",
        *,  # everything else by name: a config or a call reads like the docstring's list
        format: ShapeNetFormat = "auto",
        categories: list[str] | None = None,
        num_points: int = 2048,
        use_normals: bool = True,
        sampling: Sampling = "fps",
        batch_size: int = 16,
        num_workers: int = 0,
        download: bool = False,
        augment: Augment | None = Augment(scale=(0.8, 1.25), dropout_max=0.0),  # noqa: B008 -- never mutated
        seed: int = 0,
        missing_files: MissingPolicy = "error",
        cache_dir: str | None = None,
        generator: GeneratorConfig = GeneratorConfig(),
        predict_files: list[str] | None = None,
        predict_category: str | None = None,
        fps_order: bool = False,
        data_seed: int | None = None,
    ) -> None:
        super().__init__(root, batch_size, num_workers, augment, cache_dir, predict_files, fps_order, data_seed)
        self.save_hyperparameters()
        self.format, self.num_points, self.use_normals = format, num_points, use_normals
        self.sampling, self.download, self.seed = sampling, download, seed
        self.missing_files, self.generator = missing_files, generator
        self.table: PartTable = self._table()
        self.category_names: list[str] = self.table.names
        self.num_categories: int = len(self.category_names)
        self.num_parts: int = self.table.num_parts
        self.part_mask: torch.Tensor = torch.zeros(self.num_categories, self.num_parts, dtype=torch.bool)
        for i, c in enumerate(self.table.categories):
            self.part_mask[i, list(c.parts)] = True
        self.selected: list[int] = self._select(categories)
        self.in_channels: int = 3 if use_normals else 0
        self.predict_category = predict_category
        if predict_files and predict_category is None:
            raise ValueError(f"predict_files need predict_category: one of {self.category_names}")

    def _category_index(self) -> int | None:
        return None if self.predict_category is None else self._select([self.predict_category])[0]

    def _resolved_format(self) -> str | None:
        if self.format != "auto":
            return self.format
        if (self.root / "GENERATED.json").is_file():
            return "generated"
        return detect_shapenet_format(self.root) if self.root.is_dir() else None

    def _table(self) -> PartTable:
        if self._resolved_format() == "generated":
            return GENERATED_TABLE
        return load_part_table(self.root) if self.root.is_dir() else SHAPENETPART_TABLE

    def _select(self, categories: list[str] | None) -> list[int]:
        if categories is None:
            return list(range(self.num_categories))
        lower = {n.lower(): i for i, n in enumerate(self.category_names)}
        unknown = [c for c in categories if c.lower() not in lower]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {self.category_names}")
        return sorted({lower[c.lower()] for c in categories})

    def _download(self) -> None:
        download_and_extract(ARCHIVES["shapenetpart_hdf5" if self.format == "hdf5" else "shapenetpart_txt"], self.root)

    def _arrays(self, split: str) -> dict[str, np.ndarray]:
        fmt = self._found_format()
        source_cls = H5SegSource if fmt == "hdf5" else TxtSegSource
        source = source_cls(self.root, self.table, self.selected, self.missing_files)
        built = self._fixed_points(source, split, {"format": fmt, "categories": self.selected},
                                   f"shapenetpart-{fmt}-{split}")
        points = built["points"]
        arrays = {"pos": points[..., :3], "part": points[..., -1].astype(np.int64), "category": built["label"]}
        if points.shape[-1] == 7:
            arrays["normal"] = points[..., 3:6]
        return arrays

    def setup(self, stage: str | None = None) -> None:
        if self.files_only(stage):
            return
        self._ensure_generated()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")):
            if split not in self.datasets:
                self.datasets[split] = self._dataset(self._arrays(split), None, train=split == "train")
