"""app/render.py: palette, colour inheritance, .ply files, W&B payloads and offscreen PNGs."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from app import render


def _table(n: int = 600, seed: int = 0) -> np.ndarray:
    """A table-like cloud: a flat top and four legs (y up)."""
    rng = np.random.default_rng(seed)
    top = np.c_[rng.uniform(-1, 1, n // 2), np.full(n // 2, 0.5), rng.uniform(-0.6, 0.6, n // 2)]
    legs = [np.c_[np.full(n // 8, x), rng.uniform(-0.5, 0.5, n // 8), np.full(n // 8, z)]
            for x in (-0.9, 0.9) for z in (-0.5, 0.5)]
    return np.concatenate([top, *legs]).astype(np.float32)


def _sphere(n: int = 600, seed: int = 1) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _stages(points: np.ndarray, sizes: tuple[int, ...] = (64, 16, 4)) -> list[render.StageArrays]:
    """Nearest-seed assignments of strided seeds, stage by stage (what the backbone returns, by hand)."""
    stages, inputs = [], points
    for m in sizes:
        seeds = inputs[:: len(inputs) // m][:m]
        d = ((inputs[:, None] - seeds[None]) ** 2).sum(-1)  # (N_in, M)
        neighbors = np.argsort(((seeds[:, None] - inputs[None]) ** 2).sum(-1), axis=1)[:, :4]
        stages.append(render.StageArrays(seeds, d.argmin(1), neighbors))
        inputs = seeds
    return stages


def test_palette_is_stable_and_distinct() -> None:
    c = render.centroid_colors(32)
    assert c.shape == (32, 3) and c.dtype == np.float32
    assert np.array_equal(render.centroid_colors(8), c[:8])  # colour i depends only on i
    assert ((c >= 0) & (c <= 1)).all()
    assert len(np.unique(c.round(3), axis=0)) == 32
    assert np.linalg.norm(c[1:] - c[:-1], axis=1).min() > 0.2  # neighbours in index are far apart in colour


def test_chain_assignments_composes_stages() -> None:
    a0 = np.array([0, 0, 1, 2, 2, 3])  # 6 points → 4 centroids
    a1 = np.array([1, 0, 1, 0])  # 4 → 2
    chained = render.chain_assignments([a0, a1])
    assert chained[0].tolist() == a0.tolist()
    assert chained[1].tolist() == [1, 1, 0, 1, 1, 0]


def test_colours_follow_the_assignments() -> None:
    a0 = np.array([0, 0, 1, 2, 2, 3])
    a1 = np.array([1, 0, 1, 0])
    stages = [render.StageArrays(np.zeros((4, 3)), a0), render.StageArrays(np.zeros((2, 3)), a1)]
    point_colors, cent_colors = render.stage_point_colors(stages, shade=0.0)
    assert np.array_equal(cent_colors[1], render.centroid_colors(2))  # deepest stage: the palette
    assert np.array_equal(cent_colors[0], cent_colors[1][a1])  # shade 0: exact inheritance
    for s, chained in enumerate(render.chain_assignments([a0, a1])):
        assert np.array_equal(point_colors[s], cent_colors[s][chained])  # a point wears its centroid's colour
    # with shading, siblings differ but stay closer to their parent than to the other parent
    _, shaded = render.stage_point_colors(stages, shade=0.25)
    assert not np.allclose(shaded[0][0], shaded[0][2])  # centroids 0 and 2 are siblings (parent 1)
    for i, parent in enumerate(a1):
        own = np.linalg.norm(shaded[0][i] - shaded[1][parent])
        other = np.linalg.norm(shaded[0][i] - shaded[1][1 - parent])
        assert own < other


def test_stage_colors_rejects_inconsistent_stages() -> None:
    with pytest.raises(ValueError, match="stage 0 has 5 centroids"):
        render.stage_colors([np.zeros(6, int), np.zeros(4, int)], [5, 2])


def test_write_ply_round_trip(tmp_path) -> None:
    pts = _table()
    colors = render.centroid_colors(len(pts))
    path = render.write_ply(tmp_path / "sub" / "points.ply", pts, colors)
    cloud = o3d.io.read_point_cloud(str(path))
    assert len(cloud.points) == len(pts)
    np.testing.assert_allclose(np.asarray(cloud.points), pts, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cloud.colors), colors, atol=1 / 255)  # stored as 8-bit


def test_write_ply_rejects_mismatched_colours(tmp_path) -> None:
    with pytest.raises(ValueError, match="do not match"):
        render.write_ply(tmp_path / "x.ply", np.zeros((5, 3)), np.zeros((4, 3)))


def test_wandb_payload_subsamples_and_keeps_centroids() -> None:
    pts = _sphere(5000)
    colors = np.tile([[1.0, 0.0, 0.0]], (5000, 1))
    cent, cc = pts[:10], render.centroid_colors(10)
    a = render.wandb_object3d_payload(pts, colors, cent, cc, max_points=1000)
    assert a.shape == (1010, 6) and a.dtype == np.float32
    assert np.array_equal(a, render.wandb_object3d_payload(pts, colors, cent, cc, max_points=1000))  # fixed subset
    np.testing.assert_allclose(a[-10:, :3], cent)
    np.testing.assert_allclose(a[-10:, 3:], np.round(cc * 255))
    assert (a[:1000, 3:] >= 0).all() and (a[:1000, 3:] <= 255).all()
    assert (a[:1000, 4] > 0).all()  # faded towards white
    import wandb

    wandb.Object3D(a)  # accepted as is
    small = render.wandb_object3d_payload(pts[:50], colors[:50], cent, cc, max_points=1000)
    assert small.shape == (60, 6)


def _render_grid(points: np.ndarray, out, size=(320, 240)) -> tuple[list, object]:
    stages = _stages(points)
    pcs, ccs = render.stage_point_colors(stages)
    inputs = [points] + [s.centroids for s in stages[:-1]]
    panels = [(points, pc, s.centroids, cc, inp[s.neighbors], f"stage {i}")
              for i, (s, pc, cc, inp) in enumerate(zip(stages, pcs, ccs, inputs), 1)]
    pngs = render.render_stage_pngs(panels, [out / f"stage{i}.png" for i in range(1, 4)], *size)
    return pngs, render.render_grid_png(pngs, out / "grid.png", "a title")


@pytest.fixture(scope="module")
def renderer() -> None:
    problem = render.renderer_problem()
    if problem is not None:
        pytest.skip(f"offscreen renderer unavailable: {problem}")


def test_png_has_size_is_not_blank_and_depends_on_the_shape(tmp_path, renderer) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    pngs, grid = _render_grid(_table(), tmp_path / "a")
    other, _ = _render_grid(_sphere(), tmp_path / "b")
    for p in pngs:
        img = np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
        assert img.shape == (240, 320, 3)
        background = (img == 255).all(-1).mean()
        assert 0.3 < background < 0.995  # mostly white, but something is drawn
        assert img.std() > 20  # far above a blank image's 0
    g = Image.open(grid)
    assert g.width == 3 * 320 and g.height > 240  # three panels under a title bar
    a = np.asarray(Image.open(pngs[0]).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(other[0]).convert("RGB"), dtype=np.float64)
    assert np.abs(a - b).mean() > 5


def test_centroid_spheres_wear_their_colour(tmp_path, renderer) -> None:
    pts = _sphere(200)  # black points around one red centroid in the middle
    path = render.render_stage_png(pts, np.zeros((200, 3)), np.zeros((1, 3)), np.array([[1.0, 0.0, 0.0]]),
                                   tmp_path / "one.png", 256, 256)
    img = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    reddish = (img[:, 0] > 100) & (img[:, 1] < 40) & (img[:, 2] < 40)
    assert reddish.sum() > 20


def test_renderer_unavailable_gives_one_clear_message(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(render, "renderer_problem", lambda: "exit code 134: no EGL display")
    with pytest.raises(render.RendererUnavailable, match="no EGL display.*ply files are written"):
        render.render_stage_png(_table(), np.zeros((600, 3)), np.zeros((0, 3)), np.zeros((0, 3)),
                                tmp_path / "x.png", 32, 32)
    assert not (tmp_path / "x.png").exists()


def test_coarse_groups_are_few_spatial_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    c = rng.normal(size=(128, 3))
    groups = render.coarse_groups(c, max_groups=10)
    assert groups.shape == (128,) and 1 < groups.max() + 1 <= 10
    np.testing.assert_array_equal(groups, render.coarse_groups(c, max_groups=10))
    means = np.stack([c[groups == g].mean(0) for g in range(groups.max() + 1)])
    nearest = np.linalg.norm(c[:, None] - means[None], axis=-1).argmin(1)
    assert (nearest == groups).mean() > 0.95  # k-means: almost every centroid is nearest its own group's mean
    np.testing.assert_array_equal(render.coarse_groups(c[:6]), np.arange(6))  # few centroids: one group each


def test_masses_follow_the_assignment_chain_and_size_the_spheres() -> None:
    # 6 points → 3 centroids → 2 centroids
    assignments = [np.array([0, 0, 0, 1, 2, 2]), np.array([0, 1, 1])]
    m1, m2 = render.centroid_masses(assignments, [3, 2])
    np.testing.assert_array_equal(m1, [3, 1, 2])
    np.testing.assert_array_equal(m2, [3, 3])
    radii = render.mass_radii(np.array([0] * 10 + [4, 8, 100]))  # mean mass 8.6
    assert radii[0] == 0.4 and radii[-1] == 2.0 and radii[-3] < radii[-2] == pytest.approx(np.sqrt(8 / (112 / 13)))
