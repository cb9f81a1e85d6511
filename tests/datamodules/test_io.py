"""``read_points`` on every single-file type, and its errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from datamodules.errors import DataFormatError
from datamodules.io import read_points


def test_real_resampled_txt(resampled_samples: Path) -> None:
    out = read_points(resampled_samples / "bed/bed_0026.txt")
    assert out["pos"].shape == (10000, 3) and out["normal"].shape == (10000, 3)
    assert out["pos"].dtype == np.float32


def test_real_shapenet_txt_7_columns(shapenet_samples: Path) -> None:
    out = read_points(shapenet_samples / "04379243/1a00aa6b75362cc5b324368d54a7416f.txt")
    assert out["pos"].shape == (2751, 3)


def test_npy_h5_ply_space_txt(tmp_path: Path) -> None:
    a = np.random.default_rng(0).random((50, 6)).astype(np.float32)
    np.save(tmp_path / "c.npy", a)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["data"] = a[None, :, :3]
        f["normal"] = a[None, :, 3:]
    np.savetxt(tmp_path / "c.txt", a[:, :3])
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(a[:, :3].astype(np.float64)))
    o3d.io.write_point_cloud(str(tmp_path / "c.ply"), pc)
    for name in ("c.npy", "c.h5", "c.txt", "c.ply"):
        np.testing.assert_allclose(read_points(tmp_path / name)["pos"], a[:, :3], atol=1e-5)
    assert read_points(tmp_path / "c.h5")["normal"] is not None and read_points(tmp_path / "c.txt")["normal"] is None


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("empty.txt", "", "empty point cloud"),
        ("nan.txt", "0,0,0\nnan,1,1\n", "NaN or infinite"),
        ("inf.txt", "0 0 0\n1 inf 1\n", "NaN or infinite"),
        ("word.txt", "0 0 0\n1 abc 1\n", "non-numeric token 'abc'"),
        ("ragged.txt", "0 0 0\n1 1\n", "columns"),
        ("four.txt", "0 0 0 0\n", "3, 6 or 7 columns"),
        ("cloud.xyzrgb", "0 0 0\n", "unknown point-cloud file type"),
    ],
)
def test_bad_text_inputs(tmp_path: Path, name: str, content: str, problem: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataFormatError, match=problem) as e:
        read_points(tmp_path / name)
    assert name in str(e.value)


def test_h5_without_data_and_missing_file(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["points"] = np.zeros((1, 4, 3))
    with pytest.raises(DataFormatError, match="x.h5.*no 'data'"):
        read_points(tmp_path / "x.h5")
    with pytest.raises(DataFormatError, match="file not found"):
        read_points(tmp_path / "absent.off")
