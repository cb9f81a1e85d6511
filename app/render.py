"""Pictures of the centroids: colours, headless Open3D rendering, ``.ply`` files and W&B payloads.

Pure functions on numpy arrays, shared by ``python -m app.visualize``, the W&B callback, the demo and
``notebooks/centroids.ipynb``. Nothing here knows about torch or Lightning.

Colour rule (what a picture means)
----------------------------------
Stage ``s`` maps its inputs (the N points for ``s = 0``, else stage ``s-1``'s centroids) to ``M_s``
centroids; ``assignment[s][j]`` is the centroid that input ``j`` is assigned to (argmax attention).
Chaining the assignments gives, for every input point, the stage-``s`` centroid that summarises it.

* The deepest stage's centroids are clustered by position into at most ``max_groups`` coarse groups
  (``coarse_groups``, k-means); each group gets one palette hue, its members shades of it. With a
  handful of last-stage centroids every centroid is its own group; at paper scale (128) the picture
  shows ~10 readable regions instead of 128 near-identical hues.
* Every shallower centroid inherits the colour of the deeper centroid it is assigned to, with a small
  lightness shift among siblings (``shade``) so that the finer partition stays visible.
* Panel ``s`` shows the N input points, each in the colour of its stage-``s`` centroid, and the
  stage-``s`` centroids as larger spheres in the same colours.

So a hue is one coarse group of the last stage throughout the grid: reading the panels left to right,
the shades of one hue merge into the spheres that summarise them. A sphere's size grows with its mass,
the number of input points it summarises (``centroid_masses``; area proportional to mass).
"""

from __future__ import annotations

import colorsys
import functools
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKGROUND = (1.0, 1.0, 1.0)
# Golden-ratio hue steps keep consecutive indices far apart on the colour wheel; cycling saturation
# and value separates indices whose hues land close after many steps.
_GOLDEN = 0.618033988749895
_SATURATION = (0.85, 0.55, 0.95)
_VALUE = (0.95, 0.8, 0.65)
_LIGHT = (0.4, 1.0, 0.6)  # towards the light, shading the centroid spheres


class RendererUnavailable(RuntimeError):
    """Open3D's offscreen renderer cannot start here (the ``.ply`` files are still written)."""


@dataclass
class StageArrays:
    """One stage of one cloud, as numpy arrays.

    Shapes:
        centroids: ``[M, 3]`` float; assignment: ``[N_in]`` int, the centroid of each stage input;
        neighbors: ``[M, k]`` int indices into the stage inputs, or ``None``.
    """

    centroids: np.ndarray
    assignment: np.ndarray
    neighbors: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------- colours
def centroid_colors(m: int) -> np.ndarray:
    """A stable palette: colour ``i`` depends only on ``i``. Returns ``[m, 3]`` float32 in ``[0, 1]``."""
    i = np.arange(m)
    rgb = [
        colorsys.hsv_to_rgb((k * _GOLDEN) % 1.0, _SATURATION[k % 3], _VALUE[(k // 3) % 3]) for k in i
    ]
    return np.asarray(rgb, dtype=np.float32).reshape(m, 3)


def chain_assignments(assignments: Sequence[np.ndarray]) -> list[np.ndarray]:
    """For every stage ``s``, the stage-``s`` centroid that summarises each of the N input points.

    Shapes:
        assignments[s]: ``[N_s]`` int (stage ``s`` inputs → stage ``s`` centroids), ``N_0 = N``.
        returns a list of ``[N]`` int64 arrays, one per stage.
    """
    chained, current = [], None
    for a in assignments:
        a = np.asarray(a, dtype=np.int64)
        current = a if current is None else a[current]
        chained.append(current)
    return chained


def coarse_groups(centroids: np.ndarray, max_groups: int = 10, iters: int = 20) -> np.ndarray:
    """Group ``[M, 3]`` centroid positions into at most ``max_groups`` spatial groups (deterministic k-means).

    Seeds are farthest-point picks from centroid 0, so the result depends only on the positions.
    Returns ``[M]`` int64 group ids in ``0..G-1``; with ``M <= max_groups`` every centroid is its own group.
    """
    c = np.asarray(centroids, dtype=np.float64)
    m = len(c)
    if m <= max_groups:
        return np.arange(m, dtype=np.int64)
    seeds = [0]
    dist = np.linalg.norm(c - c[0], axis=1)
    for _ in range(max_groups - 1):
        seeds.append(int(dist.argmax()))
        dist = np.minimum(dist, np.linalg.norm(c - c[seeds[-1]], axis=1))
    centers = c[seeds]
    for _ in range(iters):
        group = np.linalg.norm(c[:, None] - centers[None], axis=-1).argmin(1)  # (M,)
        centers = np.stack([c[group == g].mean(0) if (group == g).any() else centers[g] for g in range(max_groups)])
    _, group = np.unique(group, return_inverse=True)  # drop empty groups, keep ids dense
    return group.astype(np.int64)


def centroid_masses(assignments: Sequence[np.ndarray], num_centroids: Sequence[int]) -> list[np.ndarray]:
    """Per stage, how many of the N input points each centroid summarises (through the assignment chain).

    Returns ``[M_s]`` int64 per stage; each sums to N.
    """
    return [np.bincount(idx, minlength=m) for idx, m in zip(chain_assignments(assignments), num_centroids)]


def stage_colors(
    assignments: Sequence[np.ndarray],
    num_centroids: Sequence[int],
    shade: float = 0.25,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Colours of every stage's centroids, inherited from the deepest stage (see the module docstring).

    ``shade`` is the lightness spread among the siblings of one parent (0: exact inheritance);
    ``groups`` ``[M_{S-1}]`` gives the deepest centroids' coarse groups (default: one group each).

    Shapes:
        assignments[s]: ``[N_s]`` int; num_centroids[s] = ``M_s``. Returns ``[M_s, 3]`` float32 per stage.
    """
    if len(assignments) != len(num_centroids):
        raise ValueError(f"{len(assignments)} assignments for {len(num_centroids)} stages")
    groups = np.arange(num_centroids[-1]) if groups is None else np.asarray(groups, dtype=np.int64)
    colors = [_shade_siblings(centroid_colors(int(groups.max()) + 1)[groups], groups, shade)]
    for s in range(len(num_centroids) - 2, -1, -1):
        parent = np.asarray(assignments[s + 1], dtype=np.int64)  # (M_s,) stage-s centroid → stage s+1
        if parent.shape != (num_centroids[s],):
            raise ValueError(
                f"stage {s + 1} assigns {parent.shape[0]} inputs, stage {s} has {num_centroids[s]} centroids"
            )
        colors.insert(0, _shade_siblings(colors[0][parent], parent, shade))
    return colors


def _shade_siblings(rgb: np.ndarray, parent: np.ndarray, shade: float) -> np.ndarray:
    """Spread the lightness of the children of one parent over ``[1 - shade, 1 + shade]`` (blend to black/white)."""
    rank = np.zeros(len(parent))
    for p in np.unique(parent):
        members = np.flatnonzero(parent == p)
        if len(members) > 1:
            rank[members] = np.linspace(-1.0, 1.0, len(members))
    t = (shade * rank)[:, None]
    out = np.where(t < 0, rgb * (1 + t), rgb + (1 - rgb) * t)
    return out.astype(np.float32)


def stage_point_colors(
    stages: Sequence[StageArrays], shade: float = 0.25, max_groups: int = 10
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per stage: colours of the N input points and of the stage's centroids (same colour rule).

    The deepest centroids are grouped into at most ``max_groups`` coarse groups (:func:`coarse_groups`).
    Returns ``(point_colors, centroid_colors)``: lists of ``[N, 3]`` and ``[M_s, 3]`` float32 arrays.
    """
    assignments = [st.assignment for st in stages]
    groups = coarse_groups(stages[-1].centroids, max_groups)
    cent = stage_colors(assignments, [len(st.centroids) for st in stages], shade, groups)
    chained = chain_assignments(assignments)
    return [c[idx] for c, idx in zip(cent, chained)], cent


def heat_colors(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """Map values to colours of a matplotlib colour map, scaled to the value range. ``[N]`` → ``[N, 3]``."""
    import matplotlib

    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min() if v.size else 0.0
    t = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    return matplotlib.colormaps[cmap](t)[:, :3].astype(np.float32)


# ---------------------------------------------------------------------------------------------- files
def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Write a coloured point cloud as binary ``.ply`` with Open3D. Shapes: ``[N, 3]``, colours ``[N, 3]`` in
    ``[0, 1]``."""
    import open3d as o3d

    points = np.asarray(points, dtype=np.float64)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.reshape(-1, 3)))
    if colors is not None:
        colors = np.asarray(colors, dtype=np.float64)
        if colors.shape != points.shape:
            raise ValueError(f"colors {colors.shape} do not match points {points.shape}")
        cloud.colors = o3d.utility.Vector3dVector(colors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_point_cloud(str(path), cloud):
        raise OSError(f"Open3D could not write {path}")
    return path


def wandb_object3d_payload(
    points: np.ndarray,
    colors: np.ndarray,
    centroids: np.ndarray,
    centroid_colors: np.ndarray,
    max_points: int = 2048,
    point_fade: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """The ``[n + M, 6]`` array (x, y, z, r, g, b with rgb in 0..255) for ``wandb.Object3D``.

    W&B drops points of big clouds and stores them as bulky JSON, so at most ``max_points`` input
    points are kept (a fixed random subset: the same points every epoch). Input points are faded
    towards white by ``point_fade`` so that the centroids, appended in full colour, stand out.
    """
    points, colors = np.asarray(points), np.asarray(colors)
    n = len(points)
    keep = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False)) if n > max_points else np.arange(n)
    faded = colors[keep] + (1.0 - colors[keep]) * point_fade
    xyz = np.concatenate([points[keep], np.asarray(centroids)], axis=0)
    rgb = np.concatenate([faded, np.asarray(centroid_colors)], axis=0)
    return np.concatenate([xyz, np.round(np.clip(rgb, 0, 1) * 255)], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- rendering
# Backend: Open3D's Visualizer in a hidden window, which falls back to an EGL offscreen context (Mesa's
# llvmpipe) when there is no display. Open3D's Filament ``OffscreenRenderer`` also starts here, but on
# llvmpipe its frames stalled for 10 s to several minutes each whenever the CPU was busy (measured on
# the 2-core CI box); the EGL path draws a frame in well under a second.
@functools.cache
def renderer_problem() -> str | None:
    """``None`` if the offscreen renderer starts here, else one line saying why not.

    Probed once per process in a child process: without the GL/EGL libraries the native code can abort
    the whole interpreter instead of raising.
    """
    probe = (
        "import open3d as o3d, numpy as np, sys\n"
        "v = o3d.visualization.Visualizer()\n"
        "sys.exit(0 if v.create_window(visible=False, width=8, height=8) else 3)"
    )
    try:
        res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"probe failed: {err}"
    if res.returncode == 0:
        return None
    lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
    return f"exit code {res.returncode}: {lines[-1] if lines else 'no message'}"


def require_renderer() -> None:
    """Raise :class:`RendererUnavailable` with one clear message if PNGs cannot be rendered here."""
    problem = renderer_problem()
    if problem is not None:
        raise RendererUnavailable(
            f"Open3D's offscreen renderer cannot start ({problem}). On Debian/Ubuntu install "
            "libegl1 libgl1 libusb-1.0-0 (see `make system-libs`); the .ply files are written regardless."
        )


@dataclass
class View:
    """Camera: looks at the cloud's centre from ``direction`` with ``up`` up, fitting the whole cloud."""

    direction: tuple[float, float, float] = (0.9, 0.7, 1.4)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    fov_deg: float = 30.0
    margin: float = 1.08


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def _camera_distance(offsets: np.ndarray, view: View, aspect: float) -> float:
    """Smallest distance from the centre along ``view.direction`` at which every offset is in the picture.

    A point at depth ``z`` towards the camera and lateral offset ``x`` is visible when
    ``|x| <= (dist - z) * tan(half fov)``, so ``dist = max(z + |x| / tan(half fov))`` over points and axes.
    """
    back = _unit(view.direction)
    right = _unit(np.cross(view.up, back))
    up = np.cross(back, right)
    tan_v = np.tan(np.radians(view.fov_deg) / 2) / view.margin
    z = offsets @ back
    need = np.maximum(np.abs(offsets @ right) / (tan_v * aspect), np.abs(offsets @ up) / tan_v)
    return float(max((z + need).max(), 1e-6))


def _camera(bounds: np.ndarray, view: View, width: int, height: int) -> object:
    """Pinhole parameters (OpenCV convention: x right, y down, z forward) framing ``bounds [N, 3]``."""
    import open3d as o3d

    center = (bounds.max(0) + bounds.min(0)) / 2
    back = _unit(view.direction)
    right = _unit(np.cross(view.up, back))
    up = np.cross(back, right)
    eye = center + _camera_distance(bounds - center, view, width / height) * back
    rot = np.stack([right, -up, -back])  # world → camera axes
    extrinsic = np.eye(4)
    extrinsic[:3, :3], extrinsic[:3, 3] = rot, -rot @ eye
    f = (height / 2) / np.tan(np.radians(view.fov_deg) / 2)
    params = o3d.camera.PinholeCameraParameters()
    params.intrinsic = o3d.camera.PinholeCameraIntrinsic(width, height, f, f, width / 2 - 0.5, height / 2 - 0.5)
    params.extrinsic = extrinsic
    return params


def stage_geometries(
    points: np.ndarray,
    point_colors: np.ndarray,
    centroids: np.ndarray,
    centroid_colors: np.ndarray,
    neighbor_lines: np.ndarray | None = None,
    scale: float | None = None,
    masses: np.ndarray | None = None,
) -> dict[str, object]:
    """Open3D geometries of one stage: ``points`` (cloud), ``centroids`` (one mesh of spheres), ``neighbors`` (lines).

    ``scale`` is the cloud's radius that sizes the spheres (default: from ``points``); ``masses`` ``[M]``
    (points summarised per centroid) scales each sphere's area with its mass, within 0.4x..2x the
    radius of an average centroid. Shapes as in :func:`render_stage_png`.
    """
    import open3d as o3d

    v3 = o3d.utility.Vector3dVector
    points = np.asarray(points, np.float64)
    if scale is None:
        scale = float(np.linalg.norm(points - points.mean(0), axis=1).max()) or 1.0
    cloud = o3d.geometry.PointCloud(v3(points))
    cloud.colors = v3(np.asarray(point_colors, np.float64))
    out: dict[str, object] = {"points": cloud}
    m = len(centroids)
    if m == 0:
        return out
    centroids = np.asarray(centroids, np.float64)
    colors = np.asarray(centroid_colors, np.float64)
    # Fewer centroids get bigger spheres; capped so that a handful do not hide the shape.
    unit = o3d.geometry.TriangleMesh.create_sphere(radius=scale * min(0.045, 0.4 / np.sqrt(m)), resolution=8)
    uv, ut = np.asarray(unit.vertices), np.asarray(unit.triangles)
    size = np.ones(m) if masses is None else mass_radii(masses)
    verts = (centroids[:, None, :] + size[:, None, None] * uv[None]).reshape(-1, 3)  # (M * V, 3)
    tris = (ut[None] + (np.arange(m) * len(uv))[:, None, None]).reshape(-1, 3)
    spheres = o3d.geometry.TriangleMesh(v3(verts), o3d.utility.Vector3iVector(tris))
    # Shading baked into the vertex colours (Lambert + ambient): the same colours in every viewer.
    lambert = np.clip((uv / np.linalg.norm(uv, axis=1, keepdims=True)) @ _unit(_LIGHT), 0, None)  # (V,)
    shading = (0.55 + 0.45 * lambert)[None, :, None]  # (1, V, 1)
    spheres.vertex_colors = v3((colors[:, None, :] * shading).reshape(-1, 3))
    out["centroids"] = spheres
    if neighbor_lines is not None:
        nb = np.asarray(neighbor_lines, np.float64)  # (M, k, 3)
        k = nb.shape[1]
        pts = np.concatenate([centroids, nb.reshape(-1, 3)])
        idx = np.stack([np.repeat(np.arange(m), k), m + np.arange(m * k)], axis=1)
        lines = o3d.geometry.LineSet(v3(pts), o3d.utility.Vector2iVector(idx))
        lines.colors = v3(np.repeat(colors, k, axis=0))
        out["neighbors"] = lines
    return out


def mass_radii(masses: np.ndarray) -> np.ndarray:
    """Relative sphere radii ``[M]``: ``sqrt(mass / mean mass)`` (area ∝ mass), clipped to ``[0.4, 2]``."""
    mass = np.asarray(masses, dtype=np.float64)
    mean = mass.mean() if mass.size and mass.mean() > 0 else 1.0
    return np.clip(np.sqrt(mass / mean), 0.4, 2.0)


def _render(geometries: Sequence[object], camera: object, width: int, height: int) -> np.ndarray:
    """Draw the geometries offscreen; returns the ``[H, W, 3]`` uint8 image."""
    import open3d as o3d

    require_renderer()
    vis = o3d.visualization.Visualizer()
    if not vis.create_window(visible=False, width=width, height=height):
        raise RendererUnavailable("Open3D could not open an offscreen window; the .ply files are written regardless")
    try:
        opt = vis.get_render_option()
        opt.background_color = np.asarray(BACKGROUND)
        opt.point_size = float(max(2, round(min(width, height) / 150)))
        opt.light_on = False  # colours as given; the spheres carry baked shading
        for g in geometries:
            vis.add_geometry(g)  # resets the bounding box, which sets the clipping planes
        vis.get_view_control().convert_from_pinhole_camera_parameters(camera, allow_arbitrary=True)
        return (np.asarray(vis.capture_screen_float_buffer(do_render=True)) * 255).round().astype(np.uint8)
    finally:
        vis.destroy_window()


def render_stage_png(
    points: np.ndarray,
    point_colors: np.ndarray,
    centroids: np.ndarray,
    centroid_colors: np.ndarray,
    path: str | Path,
    width: int = 640,
    height: int = 480,
    title: str | None = None,
    neighbor_lines: np.ndarray | None = None,
    view: View | None = None,
) -> Path:
    """Render one stage offscreen to a ``width`` x ``height`` PNG: points, centroid spheres, optional lines.

    Shapes:
        points ``[N, 3]``, point_colors ``[N, 3]``; centroids ``[M, 3]`` (``M`` may be 0),
        centroid_colors ``[M, 3]``; neighbor_lines ``[M, k, 3]``: a line from centroid ``i`` to each
        of its ``k`` neighbours. Colours are floats in ``[0, 1]``.
    Raises :class:`RendererUnavailable` when the renderer cannot start.
    """
    panel = (points, point_colors, centroids, centroid_colors, neighbor_lines, title)
    return render_stage_pngs([panel], [path], width, height, view)[0]


#: ``(points, point_colors, centroids, centroid_colors, neighbor_lines, title[, masses])``.
Panel = tuple


def render_stage_pngs(
    panels: Sequence[Panel],
    paths: Sequence[str | Path],
    width: int = 640,
    height: int = 480,
    view: View | None = None,
) -> list[Path]:
    """Render several panels with the same camera and scale (framed on the first panel's points).

    Each panel is ``(points, point_colors, centroids, centroid_colors, neighbor_lines, title)`` as in
    :func:`render_stage_png`, optionally followed by the centroid ``masses`` (sphere sizes).
    """
    from PIL import Image

    if len(panels) != len(paths):
        raise ValueError(f"{len(panels)} panels for {len(paths)} paths")
    if not panels:
        return []
    frame = np.asarray(panels[0][0], np.float64)
    center = (frame.max(0) + frame.min(0)) / 2
    scale = float(np.linalg.norm(frame - center, axis=1).max()) or 1.0
    camera = _camera(frame, view or View(), width, height)
    out = []
    for (pts, pc, cen, cc, lines, title, *masses), path in zip(panels, paths):
        geometries = stage_geometries(pts, pc, cen, cc, lines, scale, masses[0] if masses else None).values()
        img = Image.fromarray(_render(list(geometries), camera, width, height))
        if title:
            img = _caption(img, title)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        out.append(path)
    return out


def _font(size: int) -> object:
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _caption(img: object, text: str) -> object:
    """Write ``text`` into the top-left corner of the image (its size stays)."""
    from PIL import ImageDraw

    size = max(10, img.height // 24)
    ImageDraw.Draw(img).text((size // 2, size // 3), text, fill=(20, 20, 20), font=_font(size))
    return img


def render_grid_png(images: Sequence[str | Path], path: str | Path, title: str | None = None) -> Path:
    """Place PNGs side by side (left to right) under a title bar; returns the written path."""
    from PIL import Image, ImageDraw

    tiles = [Image.open(p).convert("RGB") for p in images]
    if not tiles:
        raise ValueError("no images to place in a grid")
    h = max(t.height for t in tiles)
    bar = max(20, h // 12) if title else 0
    grid = Image.new("RGB", (sum(t.width for t in tiles), h + bar), tuple(int(c * 255) for c in BACKGROUND))
    x = 0
    for t in tiles:
        grid.paste(t, (x, bar))
        x += t.width
    if title:
        ImageDraw.Draw(grid).text((bar // 3, bar // 6), title, fill=(0, 0, 0), font=_font(int(bar * 0.65)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
