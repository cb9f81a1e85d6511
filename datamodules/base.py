"""What the ModelNet and ShapeNetPart DataModules share: cache location, datasets of the batch contract, loaders."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.cache import cached
from datamodules.dataset import PointCloudDataset
from datamodules.errors import DataFormatError
from datamodules.files import PointFilesDataset
from datamodules.modelnet_formats import MissingPolicy
from datamodules.preprocess import build_fixed
from datamodules.sampling import Sampling
from datamodules.seeding import PerSampleSeeded, SeededShuffle
from datamodules.synthetic import GeneratorConfig, generate
from datamodules.transforms import Augment, Chain, FPSOrder


class PointCloudDataModule(LightningDataModule, ABC):
    """Holds train/val/test ``PointCloudDataset`` s and turns them into loaders (predict = test).

    Subclasses name their data set family and generator kind, the splits their caches hold and what a
    data folder contains, set the data settings declared below in ``__init__``, and implement
    ``_resolved_format``, ``_download`` and ``_arrays``.

    ``data_seed`` (``None``: off) pairs runs across models (docs/reporting.md, "Paired seeds"): the training
    order comes from ``(data_seed, epoch)`` and each sample's augmentation from ``(data_seed, epoch, sample
    index)`` (datamodules/seeding.py), not from the global RNG that building a model consumes; the task
    re-seeds the global RNG (dropout) from ``(data_seed, rank)`` when a fit starts. Without it, shuffling and
    augmentation draw from the global RNG (``seed_everything``).
    """

    family: str  # shown in messages, e.g. "ModelNet"
    kind: str  # the generator's data set kind
    splits: tuple[str, ...]  # the splits prepare_data caches
    expected_files: str  # what a data folder holds, for the "no data" message
    #: Appended to the "split has no files" error.
    empty_split_hint = ""

    # Data settings, set by each subclass's __init__ from its arguments (see their docstrings).
    format: str  # the on-disk layout, "auto" or "generated"
    num_points: int
    use_normals: bool
    in_channels: int  # 3 with normals, else 0
    sampling: Sampling
    seed: int
    missing_files: MissingPolicy
    download: bool
    generator: GeneratorConfig

    def __init__(
        self,
        root: str,
        batch_size: int,
        num_workers: int,
        augment: Augment | None,
        cache_dir: str | None,
        predict_files: list[str] | None = None,
        fps_order: bool = False,
        data_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.predict_files, self.fps_order, self.data_seed = predict_files, fps_order, data_seed
        self.root = Path(root)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment = augment
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".cache"
        self.datasets: dict[str, PointCloudDataset] = {}

    def __repr__(self) -> str:
        # Lightning's default str() builds every dataloader, which would generate or read the data
        # (jsonargparse calls it while linking arguments).
        return f"{type(self).__name__}(root={str(self.root)!r})"

    __str__ = __repr__

    @abstractmethod
    def _resolved_format(self) -> str | None:
        """The on-disk format found in (or chosen for) ``root``; ``None`` when it holds no data yet."""

    @abstractmethod
    def _download(self) -> None:
        """Fetch the data set into ``root``."""

    @abstractmethod
    def _arrays(self, split: str) -> dict[str, np.ndarray]:
        """The split's arrays of the batch contract (``pos``, ``normal``, ``label`` or ``part`` + ``category``)."""

    def prepare_data(self) -> None:
        """Generate or download the data if needed, then build the caches (once, on rank 0 under DDP)."""
        if self.predict_files:
            return
        if self.format == "generated":
            generate(self.root, self.kind, self.generator)
        elif self._resolved_format() is None:
            if not self.download:
                raise DataFormatError(
                    self.root,
                    f"no {self.family} data found (expected {self.expected_files}); "
                    "set download=true, format='generated', or put the unzipped data set here",
                )
            self._download()
        for split in self.splits:
            self._arrays(split)

    def _ensure_generated(self) -> None:
        """Generate the default data set on first use (``setup`` without ``prepare_data``)."""
        if self.format == "generated" and not (self.root / "GENERATED.json").is_file():
            generate(self.root, self.kind, self.generator)

    def _found_format(self) -> str:
        """The data set's format; a clear error when the folder holds no data yet."""
        fmt = self._resolved_format()
        if fmt is None:
            raise DataFormatError(
                self.root, f"no {self.family} data found: call prepare_data() (download/generate) first"
            )
        return fmt

    def _fixed_points(self, source: object, split: str, settings: dict, cache_name: str) -> dict[str, np.ndarray]:
        """The split's clouds reduced to ``num_points``, from the cache when its settings and files match.

        Returns the cached arrays ``points [S, N, C]`` and ``label [S]``.
        """
        if self.use_normals and not source.has_normals:
            raise DataFormatError(self.root, "this data set has no normals: set use_normals=false")
        files = source.files(split)
        if not files:
            raise DataFormatError(self.root, f"the {split} split has no files{self.empty_split_hint}")
        settings = {"split": split, "num_points": self.num_points, "sampling": self.sampling, "seed": self.seed,
                    "missing_files": self.missing_files, "order": "fps", **settings}
        return cached(
            self.cache_dir, cache_name, settings, files,
            lambda: build_fixed(source.clouds(split), self.num_points, self.sampling, self.seed),
        )

    def _dataset(self, arrays: dict[str, np.ndarray], indices: np.ndarray | None, train: bool) -> PointCloudDataset:
        """Training samples are augmented (then, with ``fps_order``, put back in FPS order); the others come
        from the cache in FPS order (docs/batch.md §5)."""
        if not train or self.augment is None:
            return PointCloudDataset(arrays, indices, self.use_normals, None)
        augment = Chain((self.augment, FPSOrder())) if self.fps_order else self.augment
        if self.data_seed is not None:
            augment = PerSampleSeeded(augment, self.data_seed)
        return PointCloudDataset(arrays, indices, self.use_normals, augment)

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self.setup("fit" if split in ("train", "val") else "test")
        ds = self.datasets[split]
        if len(ds) == 0:
            raise ValueError(f"the {split} split of {self.root} is empty")
        train = split == "train"
        paired = train and self.data_seed is not None
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=train and not paired,
            sampler=self._seeded_sampler(ds) if paired else None,
            drop_last=train and len(ds) > self.batch_size,  # no last batch of 1 (BatchNorm)
            num_workers=self.num_workers,
            # Without data_seed, shuffling and the workers' augmentation seeds come from the global torch RNG
            # (seeded by seed_everything and restored from checkpoints), with workers re-created every epoch:
            # a resumed run then continues exactly like an uninterrupted one. With it, the loader's own
            # generator draws the workers' base seed, leaving the global RNG to the model (dropout).
            generator=torch.Generator().manual_seed(self.data_seed) if paired else None,
            persistent_workers=False,
        )

    def _seeded_sampler(self, ds: PointCloudDataset) -> SeededShuffle:
        """The ``data_seed`` order of the training split: this rank's shard, starting at the trainer's epoch.

        Lightning keeps a ``DistributedSampler`` under DDP and calls its ``set_epoch`` before every epoch but the
        first one it iterates (a fresh or a resumed run's), which it iterates before: hence ``epoch`` here.
        """
        t = self.trainer
        world, rank, epoch = (1, 0, 0) if t is None else (t.world_size, t.global_rank, t.current_epoch)
        augment = ds.transform if isinstance(ds.transform, PerSampleSeeded) else None
        return SeededShuffle(ds, self.data_seed, world, rank, epoch, augment)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def files_only(self, stage: str | None) -> bool:
        """True when this module serves ``predict_files`` (then no data set is prepared or read)."""
        if self.predict_files and stage not in ("predict", None):
            raise ValueError(f"predict_files is for the predict command, not for {stage!r}: unset it")
        return bool(self.predict_files)

    def _category_index(self) -> int | None:
        """The object category of the predicted files (segmentation); ``None`` for classification."""
        return None

    def predict_dataloader(self) -> DataLoader:
        """The test split, or the user's ``predict_files`` when given."""
        if not self.predict_files:
            return self._loader("test")
        files = PointFilesDataset(
            self.predict_files, self.num_points, self.use_normals, self.sampling, self._category_index()
        )
        return DataLoader(files, batch_size=self.batch_size, num_workers=self.num_workers)
