"""The data side's farthest-point order: equal to the model's reference FPS, a permutation, robust to duplicates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.modelnet import ModelNetDataModule
from datamodules.sampling import fps_order, select_points
from datamodules.transforms import FPSOrder
from models.ops import farthest_point_sample


@pytest.mark.parametrize("n, m", [(1, 1), (17, 17), (300, 100), (1024, 512)])
def test_fps_order_equals_the_torch_reference(n: int, m: int) -> None:
    pos = np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)
    order = fps_order(pos, m)
    assert sorted(order.tolist()) == list(range(n))  # a permutation
    ref = farthest_point_sample(torch.from_numpy(pos)[None], m, method="exact")[0]
    assert order[:m].tolist() == ref.tolist()
    assert order[m:].tolist() == sorted(order[m:].tolist())  # the rest keeps its original order


def test_fps_order_with_duplicates_is_a_permutation_with_distinct_points_first() -> None:
    base = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    pos = np.repeat(base, 4, axis=0)  # 20 points, 5 distinct
    order = fps_order(pos)
    assert sorted(order.tolist()) == list(range(20))
    assert len({tuple(p) for p in pos[order[:5]]}) == 5  # every distinct point before any repeat


def test_fps_order_transform_reorders_every_per_point_key_alike() -> None:
    pos = torch.rand(50, 3)
    sample = {"pos": pos, "normal": pos * 2, "part": torch.arange(50), "label": torch.tensor(3)}
    out = FPSOrder()(sample)
    assert torch.equal(out["normal"], out["pos"] * 2) and torch.equal(pos[out["part"]], out["pos"])
    assert torch.equal(out["label"], sample["label"])
    assert fps_order(out["pos"].numpy()).tolist() == list(range(50))  # already in order: the identity


def test_cache_resampling_keeps_the_fps_prefix() -> None:
    clouds = [np.random.default_rng(i).random((400, 3)) for i in range(3)]
    idx = select_points(clouds, 128, "fps", np.random.default_rng(0))
    for c, row in zip(clouds, idx):
        assert row.tolist() == fps_order(c, 128)[:128].tolist()


@pytest.mark.parametrize("split", ["train", "test"])
def test_batches_arrive_in_fps_order(generated_modelnet, tmp_path, split: str) -> None:
    """Evaluation splits come from the cache in FPS order; training clouds only with ``fps_order`` (for models
    with ``sampling: prefix``)."""
    dm = ModelNetDataModule(root=str(generated_modelnet), format="generated", num_points=128, batch_size=4,
                            use_normals=True, cache_dir=str(tmp_path), fps_order=split == "train")
    dm.setup("fit" if split == "train" else "test")
    batch = next(iter(dm.train_dataloader() if split == "train" else dm.test_dataloader()))
    for pos, normal in zip(batch["pos"], batch["normal"]):  # the order of each (augmented) cloud is the identity
        assert fps_order(pos.numpy(), 64)[:64].tolist() == list(range(64))
        assert torch.allclose(normal.norm(dim=-1), torch.ones(128), atol=1e-4)


def test_training_clouds_are_not_ordered_by_default(generated_modelnet, tmp_path) -> None:
    """The model samples for itself: the loader spends nothing on ordering augmented (shuffled) clouds."""
    dm = ModelNetDataModule(root=str(generated_modelnet), format="generated", num_points=128, batch_size=4,
                            cache_dir=str(tmp_path))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert not all(fps_order(pos.numpy(), 64)[:64].tolist() == list(range(64)) for pos in batch["pos"])
