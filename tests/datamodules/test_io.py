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
        ("ragged.txt", "0 0 0\n1 1\n2 2 2\n", "line 2: 2 columns"),
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


# ---------------------------------------------------------------------------------------------- truncation
def _cut(path: Path, keep: float) -> Path:
    """A copy of ``path`` with about the first ``keep`` fraction of its bytes (a download that stopped early).

    Twenty bytes fewer than the exact fraction, so that a text file with equal-length lines loses whole values
    of its last line (a text table has no header: a cut that leaves every line complete cannot be detected).
    """
    data = path.read_bytes()
    cut = path.with_name(f"cut_{path.name}")
    cut.write_bytes(data[: int(len(data) * keep) - 20])
    return cut


def _write_every_format(tmp_path: Path) -> dict[str, Path]:
    """One small valid file per format: ASCII/binary PLY cloud, PLY mesh, OFF, txt, npy, h5 (synthetic)."""
    import plyfile

    rng = np.random.default_rng(0)
    a = rng.random((100, 6)).astype(np.float32)
    vertex = np.array([tuple(r) for r in a], dtype=[(c, "f4") for c in ("x", "y", "z", "nx", "ny", "nz")])
    files = {}
    for name, text in (("ascii.ply", True), ("binary.ply", False)):
        plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=text).write(str(tmp_path / name))
        files[name] = tmp_path / name
    faces = np.array([([0, 1, 2],), ([0, 2, 3],)], dtype=[("vertex_indices", "i4", (3,))])
    plyfile.PlyData([plyfile.PlyElement.describe(vertex[:4], "vertex"), plyfile.PlyElement.describe(faces, "face")],
                    text=True).write(str(tmp_path / "mesh.ply"))
    files["mesh.ply"] = tmp_path / "mesh.ply"
    (tmp_path / "mesh.off").write_text("OFF\n4 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n3 0 1 2\n3 0 2 3\n")
    files["mesh.off"] = tmp_path / "mesh.off"
    np.savetxt(tmp_path / "c.txt", a, fmt="%f", delimiter=",")
    files["c.txt"] = tmp_path / "c.txt"
    np.save(tmp_path / "c.npy", a)
    files["c.npy"] = tmp_path / "c.npy"
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["data"] = np.repeat(a[None, :, :3], 40, axis=0)
    files["c.h5"] = tmp_path / "c.h5"
    return files


@pytest.mark.parametrize("name", ["ascii.ply", "binary.ply", "mesh.ply", "mesh.off", "c.txt", "c.npy", "c.h5"])
def test_truncated_files_are_named_as_truncated(tmp_path: Path, name: str) -> None:
    """Every format: the intact file reads, a copy cut at 60 % of its bytes raises 'truncated' naming the file."""
    path = _write_every_format(tmp_path)[name]
    read_points(path, num_points=64, index=0 if name == "c.h5" else None)
    cut = _cut(path, 0.6)
    with pytest.raises(DataFormatError, match="truncated") as e:
        read_points(cut, num_points=64, index=0 if name == "c.h5" else None)
    assert str(cut) in str(e.value)


def test_ascii_ply_declaring_100_vertices_with_2_present(tmp_path: Path) -> None:
    """The case of the issue: Open3D returned 98 uninitialised points here; the strict reader refuses."""
    path = tmp_path / "short.ply"
    header = ("ply\nformat ascii 1.0\nelement vertex 100\nproperty float x\nproperty float y\nproperty float z\n"
              "end_header\n")
    path.write_text(header + "0 0 0\n1 1 1\n")
    with pytest.raises(DataFormatError, match=r"short.ply: truncated: .*vertex.*row 2"):
        read_points(path)


def test_pickled_npy_is_refused_and_named(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match=r"obj.npy: refused: .*pickled") as e:
        read_points(path)
    assert "allow_pickle" not in str(e.value)


def test_multi_cloud_files_are_counted_and_read_by_index(tmp_path: Path) -> None:
    from datamodules.io import count_clouds

    a = np.random.default_rng(0).random((4, 30, 3)).astype(np.float32)
    np.save(tmp_path / "four.npy", a)
    with h5py.File(tmp_path / "four.h5", "w") as f:
        f["data"] = a
    for name in ("four.npy", "four.h5"):
        assert count_clouds(tmp_path / name) == 4
        np.testing.assert_array_equal(read_points(tmp_path / name, index=3)["pos"], a[3])
        with pytest.raises(DataFormatError, match="holds 4 clouds"):
            read_points(tmp_path / name)
        with pytest.raises(DataFormatError, match="index 4 out of range"):
            read_points(tmp_path / name, index=4)
