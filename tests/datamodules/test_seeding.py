"""``data_seed``: the training stream (order, augmentation) from the seed alone, per epoch, per rank shard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules.modelnet import ModelNetDataModule
from datamodules.seeding import PerSampleSeeded, SeededShuffle, derived_seed
from datamodules.transforms import Augment

SMALL = {"num_points": 64, "batch_size": 4, "format": "generated"}


def _batches(root: Path, cache: Path, data_seed: int | None, num_workers: int = 0, epoch: int = 0) -> list[dict]:
    dm = ModelNetDataModule(str(root), cache_dir=str(cache), data_seed=data_seed, num_workers=num_workers,
                            augment=Augment(rotate_up=True), fps_order=True, **SMALL)
    loader = dm.train_dataloader()
    if data_seed is not None:
        loader.sampler.set_epoch(epoch)  # what Lightning does before an epoch
    return list(loader)


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_derived_seed_is_stable_and_mixes_every_key() -> None:
    assert derived_seed(3, 0, 7) == derived_seed(3, 0, 7)
    assert len({derived_seed(3, 0, 7), derived_seed(3, 1, 7), derived_seed(3, 0, 8), derived_seed(4, 0, 7)}) == 4
    assert 0 <= derived_seed(2**40, 5) < 2**63


def test_data_seed_fixes_order_and_augmentation_whatever_the_global_rng(
    generated_modelnet: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    a = _batches(generated_modelnet, tmp_path, data_seed=5)
    torch.manual_seed(1)  # another model's construction would leave the global RNG elsewhere
    torch.rand(1000)
    b = _batches(generated_modelnet, tmp_path, data_seed=5)
    assert _same(a, b)
    other = _batches(generated_modelnet, tmp_path, data_seed=6)
    assert not torch.equal(torch.cat([x["index"] for x in a]), torch.cat([x["index"] for x in other]))
    next_epoch = _batches(generated_modelnet, tmp_path, data_seed=5, epoch=1)
    assert not torch.equal(torch.cat([x["index"] for x in a]), torch.cat([x["index"] for x in next_epoch]))


def test_data_seed_stream_does_not_depend_on_workers(generated_modelnet: Path, tmp_path: Path) -> None:
    assert _same(_batches(generated_modelnet, tmp_path, 5, num_workers=0, epoch=2),
                 _batches(generated_modelnet, tmp_path, 5, num_workers=2, epoch=2))


def test_without_data_seed_the_global_rng_decides(generated_modelnet: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = _batches(generated_modelnet, tmp_path, data_seed=None)
    torch.manual_seed(0)
    assert _same(a, _batches(generated_modelnet, tmp_path, data_seed=None))
    torch.manual_seed(1)
    assert not _same(a, _batches(generated_modelnet, tmp_path, data_seed=None))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_disjoint_shards_of_one_permutation(world: int) -> None:
    data = range(12)
    single = list(SeededShuffle(data, data_seed=9, epoch=4))
    shards = [list(SeededShuffle(data, data_seed=9, num_replicas=world, rank=r, epoch=4)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(12))
    assert all(shards[r] == single[r::world] for r in range(world))


def test_set_epoch_moves_the_augmentation_to_the_epoch() -> None:
    augment = PerSampleSeeded(Augment(), data_seed=1)
    sampler = SeededShuffle(range(4), data_seed=1, augment=augment)
    sample = {"pos": torch.rand(32, 3), "index": torch.tensor(2)}
    first = augment(sample)["pos"]
    assert torch.equal(first, augment(sample)["pos"])
    sampler.set_epoch(1)
    assert augment.epoch == 1
    assert not torch.equal(first, augment(sample)["pos"])
