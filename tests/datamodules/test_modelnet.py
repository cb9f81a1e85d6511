"""ModelNet: every layout through its reader and the DataModule, generated round trip, caches, loaders, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from datamodules import Augment, DataFormatError, ModelNetDataModule
from datamodules.batch import check_batch
from datamodules.modelnet_formats import OffSource, PlyH5Source, ResampledSource
from datamodules.synthetic import CLASS_NAMES
from datamodules.tables import MODELNET40_CLASSES
from tests.datamodules.conftest import TINY

SMALL = {"num_points": 128, "batch_size": 4, "generator": TINY}


def test_real_resampled_reader_classes_and_missing_listed_file(resampled_samples: Path) -> None:
    with pytest.raises(DataFormatError, match="airplane_0126.txt: listed in modelnet40_train.txt but missing"):
        ResampledSource(resampled_samples).files("train")
    src = ResampledSource(resampled_samples, missing="skip")
    assert src.class_names == list(MODELNET40_CLASSES)
    clouds = list(src.clouds("train"))
    assert [MODELNET40_CLASSES[label] for _, label in clouds] == ["bed", "xbox"]
    assert all(c.shape == (10000, 6) for c, _ in clouds)


def test_real_resampled_datamodule_skip(resampled_samples: Path, tmp_path: Path) -> None:
    dm = ModelNetDataModule(str(resampled_samples), missing_files="skip", val_split=0.5, cache_dir=str(tmp_path),
                            **SMALL)
    assert dm.num_classes == 40 and dm.in_channels == 3
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 2
    with pytest.raises(DataFormatError, match="test split has no files"):
        dm.setup("test")


def test_real_modelnet10_off(real_samples: Path, tmp_path: Path) -> None:
    src = OffSource(real_samples / "ModelNet10", name="10", mesh_points=2000)
    clouds = list(src.clouds("train"))
    assert len(clouds) == 3 and {label for _, label in clouds} == {0}  # bathtub = 0 in ModelNet10
    dm = ModelNetDataModule(str(real_samples / "ModelNet10"), name="10", cache_dir=str(tmp_path), mesh_points=2000,
                            **SMALL)
    assert dm._resolved_format() == "off" and dm.num_classes == 10
    assert dm._arrays("train")["pos"].shape == (3, 128, 3)


def test_unknown_class_folder(tmp_path: Path) -> None:
    (tmp_path / "spaceship/train").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="spaceship: class folder not in the ModelNet40"):
        OffSource(tmp_path)


def _write_h5(root: Path, with_label: bool = True) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        with h5py.File(root / f"ply_data_{split}0.h5", "w") as f:  # synthetic, in the real schema
            f["data"] = rng.random((n, 200, 3), dtype=np.float32)
            f["normal"] = rng.random((n, 200, 3), dtype=np.float32)
            if with_label:
                f["label"] = np.arange(n, dtype=np.uint8)[:, None]
        (root / f"{split}_files.txt").write_text(f"C:\\some\\prefix\\ply_data_{split}0.h5\n")


def test_ply_hdf5_with_prefixed_list_files(tmp_path: Path) -> None:
    _write_h5(tmp_path)
    dm = ModelNetDataModule(str(tmp_path), **SMALL)
    assert dm._resolved_format() == "ply_hdf5"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    check_batch(batch, "classification")
    assert sorted(dm._arrays("train")["label"].tolist()) == list(range(6))


def test_h5_without_label(tmp_path: Path) -> None:
    _write_h5(tmp_path, with_label=False)
    with pytest.raises(DataFormatError, match=r"ply_data_train0.h5: HDF5 file lacks dataset\(s\) \['label'\]"):
        list(PlyH5Source(tmp_path).clouds("train"))


def test_generated_round_trip_and_batch_contract(generated_modelnet: Path, tmp_path: Path) -> None:
    dm = ModelNetDataModule(str(generated_modelnet), format="generated", cache_dir=str(tmp_path), **SMALL)
    assert dm.class_names == CLASS_NAMES and dm.num_classes >= 10
    auto = ModelNetDataModule(str(generated_modelnet), format="normal_resampled", cache_dir=str(tmp_path), **SMALL)
    assert auto.class_names == CLASS_NAMES  # the real reader reads the generated names
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    check_batch(batch, "classification")
    assert batch["pos"].shape == (4, 128, 3)
    test = dm._arrays("test")
    assert np.allclose(np.linalg.norm(test["pos"], axis=-1).max(1), 1, atol=1e-5)  # unit sphere
    assert len(test["label"]) == TINY.test_per_class * len(CLASS_NAMES)


def test_augment_off_at_test_and_deterministic_data(generated_modelnet: Path, tmp_path: Path) -> None:
    dm = ModelNetDataModule(str(generated_modelnet), cache_dir=str(tmp_path), augment=Augment(rotate_up=True), **SMALL)
    dm.setup()
    a, b = dm.datasets["test"][0], dm.datasets["test"][0]
    assert torch.equal(a["pos"], b["pos"])
    t1, t2 = dm.datasets["train"][0], dm.datasets["train"][0]
    assert not torch.equal(t1["pos"], t2["pos"]) and t1["pos"].shape == (128, 3)
    assert torch.allclose(t1["normal"].norm(dim=-1), torch.ones(128), atol=1e-5)


def test_cache_reused_and_invalidated(
    generated_modelnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(generated_modelnet, root)
    builds = []
    import datamodules.base as mod  # where the cached build is looked up

    real_build = mod.build_fixed
    monkeypatch.setattr(mod, "build_fixed", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    ModelNetDataModule(str(root), **SMALL)._arrays("test")
    ModelNetDataModule(str(root), **SMALL)._arrays("test")
    assert len(builds) == 1  # reused
    ModelNetDataModule(str(root), **{**SMALL, "num_points": 64})._arrays("test")
    assert len(builds) == 2  # settings changed: a new cache file
    assert len(list((root / ".cache").glob("*.npz"))) == 2
    f = root / "airplane/airplane_0005.txt"
    f.write_text(f.read_text())  # touched: mtime changes
    ModelNetDataModule(str(root), **SMALL)._arrays("test")
    assert len(builds) == 3  # stale: rebuilt


def test_num_workers(generated_modelnet: Path, tmp_path: Path) -> None:
    dm = ModelNetDataModule(str(generated_modelnet), cache_dir=str(tmp_path), num_workers=2, **SMALL)
    dm.setup("fit")
    seen = torch.cat([b["index"] for b in dm.val_dataloader()])
    assert sorted(seen.tolist()) == list(range(len(dm.datasets["val"])))


def test_no_data_message(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="format='generated'"):
        ModelNetDataModule(str(tmp_path / "nothing")).prepare_data()
