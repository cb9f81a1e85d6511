"""ShapeNetPart: real txt samples, file variants, hdf5 variant, generated round trip, and part-label errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from datamodules import DataFormatError, ShapeNetPartDataModule
from datamodules.batch import check_batch
from datamodules.shapenet_formats import TxtSegSource
from datamodules.synthetic import PART_TABLE
from datamodules.tables import SHAPENETPART_TABLE
from tests.datamodules.conftest import TINY

SMALL = {"num_points": 256, "batch_size": 2, "generator": TINY}


def test_real_samples_parts_and_categories(shapenet_samples: Path, tmp_path: Path) -> None:
    dm = ShapeNetPartDataModule(str(shapenet_samples), missing_files="skip", cache_dir=str(tmp_path), **SMALL)
    assert (dm.num_categories, dm.num_parts) == (16, 50) and dm.part_mask.shape == (16, 50)
    assert dm.part_mask[15].nonzero().flatten().tolist() == [47, 48, 49]
    test = dm._arrays("test")
    assert test["category"].tolist() == [14, 15]  # Skateboard, Table
    assert set(np.unique(test["part"][0])) == {45} and set(np.unique(test["part"][1])) <= {47, 48, 49}
    assert test["pos"].shape == (2, 256, 3) and test["normal"].shape == (2, 256, 3)


def test_missing_listed_file_is_named(shapenet_samples: Path) -> None:
    src = TxtSegSource(shapenet_samples, SHAPENETPART_TABLE, list(range(16)))
    with pytest.raises(DataFormatError, match="212e0563473156e255483301a044235.txt: listed in shuffled_train"):
        src.files("train")


def test_category_subset_keeps_global_ids(shapenet_samples: Path, tmp_path: Path) -> None:
    dm = ShapeNetPartDataModule(str(shapenet_samples), categories=["Table"], cache_dir=str(tmp_path), **SMALL)
    assert dm.num_parts == 50 and dm.selected == [15]
    dm.setup("test")  # the missing Skateboard file is not requested
    assert dm._arrays("test")["part"].min() >= 47


def test_unknown_category(shapenet_samples: Path) -> None:
    with pytest.raises(ValueError, match="unknown categories \\['Cattle'\\]"):
        ShapeNetPartDataModule(str(shapenet_samples), categories=["Cattle"])


def test_variant_mapping_files(real_samples: Path, shapenet_samples: Path, tmp_path: Path) -> None:
    for variant in ("pillar-coder", "colorful-days-0724"):
        root = tmp_path / variant
        shutil.copytree(shapenet_samples, root)
        src = real_samples / "variants" / variant / shapenet_samples.name / "synsetoffset2category.txt"
        shutil.copy(src, root / "synsetoffset2category.txt")  # no final newline / extra 'Cattle' line
        assert TxtSegSource(root, SHAPENETPART_TABLE, [15]).files("test")


def _copy_with_label(shapenet_samples: Path, tmp_path: Path, label: str) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(shapenet_samples, root)
    f = root / "04379243/1a2abbc9712e2fffc3bd24f986301745.txt"
    lines = f.read_text().splitlines()
    lines[5] = " ".join(lines[5].split()[:6] + [label])
    f.write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    ("label", "problem"), [("50.000000", "outside 0..49"), ("3.000000", "does not belong to Table")]
)
def test_bad_part_labels(shapenet_samples: Path, tmp_path: Path, label: str, problem: str) -> None:
    root = _copy_with_label(shapenet_samples, tmp_path, label)
    src = TxtSegSource(root, SHAPENETPART_TABLE, [15])
    with pytest.raises(DataFormatError, match=f"1a2abbc9712e2fffc3bd24f986301745.txt: part label .*{problem}"):
        list(src.clouds("test"))


def test_hdf5_variant(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        with h5py.File(tmp_path / f"ply_data_{split}0.h5", "w") as f:  # synthetic, in the hdf5_data schema
            f["data"] = rng.random((3, 300, 3), dtype=np.float32)
            f["label"] = np.array([[0], [15], [4]], dtype=np.uint8)
            f["pid"] = np.stack([np.full(300, 1), np.full(300, 48), np.full(300, 13)]).astype(np.uint8)
    dm = ShapeNetPartDataModule(str(tmp_path), use_normals=False, categories=["Airplane", "Table"], **SMALL)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    check_batch(batch, "segmentation")
    assert "normal" not in batch and sorted(batch["category"].tolist()) == [0, 15]
    with pytest.raises(DataFormatError, match="no normals"):
        ShapeNetPartDataModule(str(tmp_path), cache_dir=str(tmp_path / "c"), **SMALL).setup("fit")


def test_generated_round_trip(generated_shapenetpart: Path, tmp_path: Path) -> None:
    table = json.loads((generated_shapenetpart / "part_table.json").read_text())
    assert len(table) == len(PART_TABLE.categories) >= 10
    dm = ShapeNetPartDataModule(str(generated_shapenetpart), format="txt", cache_dir=str(tmp_path), **SMALL)
    assert dm.num_parts == PART_TABLE.num_parts and dm.category_names == PART_TABLE.names
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    check_batch(batch, "segmentation")
    mask = dm.part_mask[batch["category"]]  # (B, P)
    assert mask.gather(1, batch["part"]).all()  # every point's part belongs to its category
    assert len(dm.datasets["val"]) == TINY.val_per_class * dm.num_categories
