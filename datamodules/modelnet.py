"""``ModelNetDataModule``: ModelNet40/10 classification from raw ``.off`` meshes, ``modelnet40_normal_resampled``,
``modelnet40_ply_hdf5_2048`` or the generated default data set (which is written in the resampled layout).

Validation: ModelNet has no official val split. ``val_split="test"`` (default) validates on the test split, as the
field does; a float ``f`` holds out a seeded fraction ``f`` of train instead (then val and test are disjoint).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from datamodules.base import PointCloudDataModule
from datamodules.download import ARCHIVES, download_and_extract
from datamodules.io import DEFAULT_MESH_POINTS
from datamodules.modelnet_formats import (
    MissingPolicy,
    ModelNetSource,
    OffSource,
    PlyH5Source,
    ResampledSource,
    detect_modelnet_format,
)
from datamodules.sampling import Sampling
from datamodules.synthetic import CLASS_NAMES as GENERATED_CLASSES
from datamodules.synthetic import GeneratorConfig
from datamodules.tables import modelnet_classes
from datamodules.transforms import Augment

ModelNetFormat = Literal["auto", "off", "normal_resampled", "ply_hdf5", "generated"]
#: What ``download=True`` fetches per format (``auto``: the smallest archive, which has a mirror).
DOWNLOADS = {
    "off": "modelnet{name}_off",
    "normal_resampled": "modelnet40_normal_resampled",
    "ply_hdf5": "modelnet40_ply_hdf5_2048",
}


class ModelNetDataModule(PointCloudDataModule):
    """ModelNet classification. Batches: ``pos``, ``normal`` (if ``use_normals``), ``label``, ``index`` (see batch.py).

    Args:
        root: the data set folder (or, for ``generated``, where it is generated).
        format: the on-disk layout; ``auto`` detects it from ``root``; ``generated`` generates into ``root``.
        name: ``"40"`` or ``"10"`` (ModelNet10; not for ``ply_hdf5``).
        num_points: N, fixed for every sample.
        use_normals: add ``normal`` to the batches (``in_channels`` = 3, else 0).
        sampling: how clouds are reduced to N points, once, at cache-build time.
        augment: training augmentations (``None``: none).
        val_split: ``"test"`` or the fraction of train held out for validation.
        seed: seeds sampling and hold-out (the train shuffling: the global RNG or ``data_seed``).
        missing_files: ``"error"`` (default) or ``"skip"`` (with a warning) for files a split list names but lacks.
        mesh_points: points sampled from each raw ``.off`` mesh before resampling to N.
        cache_dir: where preprocessed splits are cached (default ``<root>/.cache``).
        generator: sizes of the generated data set.
        predict_files: user files (``.off .ply .txt .npy .h5``) that ``predict`` runs on instead of the test split.
        fps_order: put every augmented training cloud back in farthest-point order in the loader (about 2 ms per
            1024 points on one core), for a backbone with ``sampling: prefix``; off by default, since the model
            samples for itself (docs/batch.md §5).
        data_seed: pairs runs across models (docs/reporting.md, "Paired seeds"): the training order comes from
            ``(data_seed, epoch)``, each sample's augmentation from ``(data_seed, epoch, sample index)`` and the
            dropout stream from ``(data_seed, rank)``, so one ``data_seed`` gives every model the same batches
            while ``seed_everything`` seeds the initialisation alone; ``None`` (default): all from the global RNG.
    """

    family = "ModelNet"
    kind = "modelnet"
    splits = ("train", "test")
    expected_files = "modelnet*_shape_names.txt, ply_data_*.h5 or <class>/train/*.off"

    def __init__(
        self,
        root: str = "data/generated_modelnet",
        *,  # everything else by name: a config or a call reads like the docstring's list
        format: ModelNetFormat = "auto",
        name: Literal["40", "10"] = "40",
        num_points: int = 1024,
        use_normals: bool = True,
        sampling: Sampling = "fps",
        batch_size: int = 32,
        num_workers: int = 0,
        download: bool = False,
        augment: Augment | None = Augment(),  # noqa: B008 -- never mutated (the epoch lives in PerSampleSeeded)
        val_split: float | Literal["test"] = "test",
        seed: int = 0,
        missing_files: MissingPolicy = "error",
        mesh_points: int = DEFAULT_MESH_POINTS,
        cache_dir: str | None = None,
        generator: GeneratorConfig = GeneratorConfig(),
        predict_files: list[str] | None = None,
        fps_order: bool = False,
        data_seed: int | None = None,
    ) -> None:
        super().__init__(root, batch_size, num_workers, augment, cache_dir, predict_files, fps_order, data_seed)
        self.save_hyperparameters()
        self.format, self.name, self.num_points = format, name, num_points
        self.use_normals, self.sampling, self.download = use_normals, sampling, download
        self.val_split, self.seed, self.missing_files = val_split, seed, missing_files
        self.mesh_points, self.generator = mesh_points, generator
        if not (val_split == "test" or 0 < float(val_split) < 1):
            raise ValueError(f"val_split must be 'test' or a fraction in (0, 1), got {val_split!r}")
        self.class_names: list[str] = self._class_names()
        self.num_classes: int = len(self.class_names)
        self.in_channels: int = 3 if use_normals else 0

    def _resolved_format(self) -> str | None:
        if self.format != "auto":
            return self.format
        if (self.root / "GENERATED.json").is_file():
            return "generated"
        return detect_modelnet_format(self.root) if self.root.is_dir() else None

    def _class_names(self) -> list[str]:
        fmt = self._resolved_format()
        if fmt == "generated":
            return list(GENERATED_CLASSES)
        if fmt is None or not self.root.is_dir():  # to be downloaded: the real table
            return list(modelnet_classes(self.name))
        return self._source(fmt).class_names

    def _source(self, fmt: str) -> ModelNetSource:
        if fmt in ("normal_resampled", "generated"):
            return ResampledSource(self.root, self.name if fmt != "generated" else "40", self.missing_files)
        if fmt == "off":
            return OffSource(self.root, self.name, self.mesh_points, self.seed)
        if fmt == "ply_hdf5":
            return PlyH5Source(self.root, self.name, self.missing_files)
        raise ValueError(f"unknown ModelNet format {fmt!r}")

    def _download(self) -> None:
        key = DOWNLOADS.get(self.format if self.format != "auto" else "ply_hdf5").format(name=self.name)
        download_and_extract(ARCHIVES[key], self.root)

    def _arrays(self, split: str) -> dict[str, np.ndarray]:
        fmt = self._found_format()
        settings = {"format": fmt, "name": self.name, "mesh_points": self.mesh_points}
        built = self._fixed_points(self._source(fmt), split, settings, f"modelnet{self.name}-{fmt}-{split}")
        points = built["points"]
        arrays = {"pos": points[..., :3], "label": built["label"]}
        if points.shape[-1] >= 6:
            arrays["normal"] = points[..., 3:6]
        return arrays

    def setup(self, stage: str | None = None) -> None:
        if self.files_only(stage):
            return
        self._ensure_generated()
        if stage in ("fit", "validate", None) and "train" not in self.datasets:
            train = self._arrays("train")
            if self.val_split == "test":
                self.datasets["train"] = self._dataset(train, None, train=True)
                self.datasets["val"] = self._dataset(self._arrays("test"), None, train=False)
            else:
                perm = np.random.default_rng(self.seed).permutation(len(train["pos"]))
                n_val = max(1, round(float(self.val_split) * len(perm)))
                self.datasets["train"] = self._dataset(train, np.sort(perm[n_val:]), train=True)
                self.datasets["val"] = self._dataset(train, np.sort(perm[:n_val]), train=False)
        if stage in ("test", "predict", None) and "test" not in self.datasets:
            self.datasets["test"] = self._dataset(self._arrays("test"), None, train=False)
