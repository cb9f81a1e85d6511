"""Paired seeds (docs/reporting.md §"Paired seeds"): the training data stream — shuffle order, augmentation — drawn
from ``data_seed`` alone, so that one seed gives every model the same batches whatever it draws while being built.

The order depends on ``(data_seed, epoch)``, each sample's augmentation on ``(data_seed, epoch, sample index)``:
neither depends on the global RNG, the number of loader workers or, under DDP, the rank (each rank takes its
shard of the one permutation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

Sample = dict[str, Tensor]


def derived_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed (fits ``torch.manual_seed``) from integer ``keys`` (NumPy's ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class PerSampleSeeded:
    """Apply ``transform(sample, generator)`` with a generator seeded from ``(data_seed, epoch, sample["index"])``.

    ``epoch`` is set by :class:`SeededShuffle` (the loader's sampler) before each epoch's workers start.
    """

    transform: Callable[[Sample, torch.Generator | None], Sample]
    data_seed: int
    epoch: int = 0

    def __call__(self, sample: Sample) -> Sample:
        seed = derived_seed(self.data_seed, self.epoch, int(sample["index"]))
        return self.transform(sample, torch.Generator().manual_seed(seed))


class SeededShuffle(DistributedSampler):
    """The training order: one permutation per ``(data_seed, epoch)``, shared by every rank, each taking its shard.

    ``DistributedSampler`` with ``seed=data_seed`` (so Lightning keeps it under DDP instead of injecting its own),
    whose ``set_epoch`` (called by Lightning before every epoch) also moves ``augment`` to that epoch.

    Args:
        dataset: the training dataset.
        data_seed: the seed of the data stream.
        num_replicas, rank: the world size and this process's global rank (1 and 0 without DDP).
        epoch: the epoch the first iteration serves (a resumed run's current epoch).
        augment: the dataset's per-sample seeded augmentation, or ``None``.
    """

    def __init__(
        self,
        dataset: Dataset,
        data_seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        epoch: int = 0,
        augment: PerSampleSeeded | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=data_seed)
        self.augment = augment
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.augment is not None:
            self.augment.epoch = epoch
