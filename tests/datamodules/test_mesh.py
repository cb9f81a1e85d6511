"""OFF parsing quirks (derived from a real ModelNet10 file at test time) and OFF errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datamodules.errors import DataFormatError
from datamodules.io import read_points
from datamodules.mesh import read_off

SQUARE = "OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n"


def _write(tmp_path: Path, text: str, name: str = "m.off") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


def test_glued_header_variant_of_real_file_loads_identically(real_samples: Path, tmp_path: Path) -> None:
    original = real_samples / "ModelNet10/bathtub/train/bathtub_0001.off"
    lines = original.read_text().split("\n")
    glued = _write(tmp_path, "\n".join([lines[0] + lines[1], *lines[2:]]), "bathtub_0001_glued_DERIVED.off")
    assert glued.read_text().startswith("OFF3514 3546 0")
    v0, f0 = read_off(original)
    v1, f1 = read_off(glued)
    np.testing.assert_array_equal(v0, v1)
    np.testing.assert_array_equal(f0, f1)
    assert v0.shape == (3514, 3) and f0.shape == (3546, 3)
    a, b = read_points(original, 512), read_points(tmp_path / "bathtub_0001_glued_DERIVED.off", 512)
    assert a["pos"].shape == (512, 3) and a["normal"].shape == (512, 3)
    assert b["pos"].shape == (512, 3) and b["normal"].shape == (512, 3)


def test_crlf_comments_trailing_spaces_no_final_newline(tmp_path: Path) -> None:
    text = "OFF\r\n# a comment\r\n3 1 0  \r\n0 0 0 \r\n1 0 0\r\n\r\n0 1 0 # c\r\n3 0 1 2"
    v, f = read_off(_write(tmp_path, text))
    assert v.shape == (3, 3) and f.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize(("k", "n_tri"), [(4, 2), (5, 3), (6, 4)])
def test_polygons_are_triangulated_not_dropped(tmp_path: Path, k: int, n_tri: int) -> None:
    verts = "".join(f"{np.cos(a)} {np.sin(a)} 0\n" for a in np.linspace(0, 2 * np.pi, k, endpoint=False))
    v, f = read_off(_write(tmp_path, f"OFF\n{k} 1 0\n{verts}{k} {' '.join(map(str, range(k)))}\n"))
    assert f.shape == (n_tri, 3)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("OFF\n4 1 0\n0 0 0\n1 0 0\n", "truncated"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n", "wrong vertex or face count"),
        ("OFF\n5 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n", "truncated"),
        ("OFF\n4 1 0\n0 0 0\n1 x 0\n1 1 0\n0 1 0\n4 0 1 2 3\n", "non-numeric"),
        ("OFF\n4 1 0\n0 0 0\nnan 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n", "NaN or infinite"),
        ("OFF\n4 1 0\n0 0 0\ninf 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n", "NaN or infinite"),
        ("OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 9\n", "out of range"),
        ("PLY\n", "not an OFF file"),
        ("OFF\n0 0 0\n", "empty mesh"),
    ],
)
def test_bad_off_names_file_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    p = _write(tmp_path, text, "broken.off")
    with pytest.raises(DataFormatError, match=problem) as e:
        read_off(p)
    assert "broken.off" in str(e.value)


def test_square_quad_has_area(tmp_path: Path) -> None:
    out = read_points(_write(tmp_path, SQUARE), 100)
    assert out["pos"][:, 2].max() == 0 and np.allclose(np.abs(out["normal"][:, 2]), 1)
