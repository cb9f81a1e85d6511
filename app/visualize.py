"""``python -m app.visualize``: which input points each centroid summarises, stage by stage.

For every stage: the input points coloured by the centroid that summarises them (argmax attention,
chained through the stages; colour rule in :mod:`app.render`), the centroids as larger spheres in the
same colours, optionally lines to their k neighbours; the predicted class in the title (segmentation:
an extra panel of predicted part colours). Writes one PNG per stage, a grid PNG and ``.ply`` files.

    # untrained (KNN-initialised) centroids on the first test shape of the generated data
    python -m app.visualize --split test --index 0 --out outputs/visualize/table
    # a trained model on a file of yours (.off, .ply, .txt, .npy)
    python -m app.visualize --ckpt runs/demo/checkpoints/last.ckpt --file my_cloud.ply --neighbors

An existing non-empty ``--out`` folder is refused unless ``--overwrite``; without ``--out`` a fresh
folder under ``outputs/visualize/`` is made. Nothing of yours is overwritten silently.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from lightning import LightningModule
from torch import Tensor

from app import render
from app.callbacks import fresh_path
from datamodules.files import load_file_sample

DEFAULT_CONFIG = "configs/demo.yaml"
DEFAULT_OUT_ROOT = Path("outputs/visualize")


@dataclass
class Analysis:
    """What the pictures show, as numpy arrays of one cloud.

    Shapes:
        points ``[N, 3]``; stages: one :class:`render.StageArrays` per stage; parts ``[N]`` predicted part
        per point (segmentation) and true_parts ``[N]`` when known.
    """

    points: np.ndarray
    stages: list[render.StageArrays]
    title: str
    parts: np.ndarray | None = None
    true_parts: np.ndarray | None = None
    stage_inputs: list[np.ndarray] = field(default_factory=list)  # positions of each stage's inputs


# ---------------------------------------------------------------------------------------------- inputs
def load_model(ckpt: str | None, config: str) -> tuple[LightningModule, object]:
    """The task (trained from ``ckpt``, else untrained from ``config``) and the config's data module."""
    from app.cli import build_from_config, load_task

    task, datamodule = build_from_config(config)
    if ckpt is not None:
        task = load_task(ckpt)
    return task.eval(), datamodule


def sample_from_split(datamodule: object, split: str, index: int) -> dict[str, Tensor]:
    """Sample ``index`` of a data set split (``test`` or ``val``), unbatched as the dataset yields it."""
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    dataset = (datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()).dataset
    if not 0 <= index < len(dataset):
        raise IndexError(f"--index {index} is out of range: the {split} split has {len(dataset)} samples")
    return dataset[index]


# ---------------------------------------------------------------------------------------------- model
@torch.no_grad()
def analyse(task: LightningModule, sample: dict[str, Tensor], name: str = "", trained: bool = True) -> Analysis:
    """Run the task on one unbatched sample and collect the per-stage centroids and assignments."""
    batch = {k: v.unsqueeze(0).to(task.device) for k, v in sample.items()}
    out = task.features(batch, return_attention=True)
    points = out.pos[0].cpu().numpy()
    stages, inputs = [], [points]
    for st in out.stages:
        stages.append(render.StageArrays(st.pos[0].cpu().numpy(), st.assignment[0].cpu().numpy(), st.neighbors[0].cpu().numpy()))
        inputs.append(stages[-1].centroids)
    status = "" if trained else " · untrained"
    parts = true_parts = None
    if hasattr(task, "class_names"):
        probs = task.logits(batch, out).softmax(-1)[0]
        pred = int(probs.argmax())
        truth = f"true: {task.class_names[int(sample['label'])]} · " if "label" in sample else ""
        title = f"{name} · {truth}predicted: {task.class_names[pred]} ({float(probs[pred]):.0%}){status}"
    else:
        if "category" not in sample:
            raise ValueError("segmentation needs the shape's category: pass --category NAME")
        parts = task.logits(batch, out).argmax(-1)[0].cpu().numpy()
        true_parts = sample["part"].numpy() if "part" in sample else None
        title = f"{name} · category: {task.category_names[int(sample['category'])]}{status}"
    return Analysis(points, stages, title.strip(" ·"), parts, true_parts, inputs[:-1])


# ---------------------------------------------------------------------------------------------- output
def prepare_out_dir(out: str | Path | None, name: str, overwrite: bool = False) -> Path:
    """The output folder (not yet created): ``out`` (refused when it holds files, unless ``overwrite``) or a fresh one for ``name``."""
    if out is None:
        path = fresh_path(DEFAULT_OUT_ROOT / name)
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"--out {path} is a file, not a folder")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"--out {path} exists and is not empty: pass --overwrite or choose another folder")
    return path


def render_analysis(
    a: Analysis, out_dir: str | Path, size: tuple[int, int] = (640, 480), neighbors: bool = False
) -> dict[str, list[Path]]:
    """Write ``stage<s>.png``, ``grid.png`` and ``stage<s>_points.ply``/``stage<s>_centroids.ply`` (+ parts).

    Returns the written paths by kind (``png``, ``grid``, ``ply``). If the renderer cannot start, its
    one-line reason goes to stderr and only the ``.ply`` files are written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    point_colors, cent_colors = render.stage_point_colors(a.stages)
    panels, names, ply = [], [], []
    for s, (st, pc, cc, inp) in enumerate(zip(a.stages, point_colors, cent_colors, a.stage_inputs), start=1):
        lines = inp[st.neighbors] if neighbors and st.neighbors is not None else None  # (M, k, 3)
        panels.append((a.points, pc, st.centroids, cc, lines, f"stage {s}: {len(inp)} → {len(st.centroids)} centroids"))
        names.append(f"stage{s}")
        ply += [render.write_ply(out_dir / f"stage{s}_points.ply", a.points, pc),
                render.write_ply(out_dir / f"stage{s}_centroids.ply", st.centroids, cc)]  # fmt: skip
    for key, labels in (("parts", a.parts), ("true_parts", a.true_parts)):
        if labels is not None:
            colors = render.centroid_colors(int(labels.max()) + 1)[labels]
            title = "predicted parts" if key == "parts" else "true parts"
            panels.append((a.points, colors, np.zeros((0, 3)), np.zeros((0, 3)), None, title))
            names.append(key)
            ply.append(render.write_ply(out_dir / f"{key}.ply", a.points, colors))
    paths = {"ply": ply, "png": [], "grid": []}
    try:
        w, h = size
        paths["png"] = render.render_stage_pngs(panels, [out_dir / f"{n}.png" for n in names], w, h)
    except render.RendererUnavailable as err:
        print(f"no PNGs: {err}", file=sys.stderr)
        return paths
    paths["grid"] = [render.render_grid_png(paths["png"], out_dir / "grid.png", a.title)]
    return paths


def show(a: Analysis) -> None:
    """One interactive Open3D window per stage (close it to see the next); needs a display."""
    import open3d as o3d

    point_colors, cent_colors = render.stage_point_colors(a.stages)
    for s, (st, pc, cc) in enumerate(zip(a.stages, point_colors, cent_colors), start=1):
        geometries = render.stage_geometries(a.points, pc, st.centroids, cc)
        o3d.visualization.draw_geometries(list(geometries.values()), window_name=f"{a.title} · stage {s}")


def has_display() -> bool:
    """Whether an interactive window can open (macOS/Windows, or X11/Wayland on Linux)."""
    return sys.platform != "linux" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# ---------------------------------------------------------------------------------------------- command
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m app.visualize", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="trained checkpoint; without it the untrained, KNN-initialised centroids are shown")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"model + data config (default {DEFAULT_CONFIG})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--file", help="a point cloud or mesh of yours: .off, .ply, .txt, .npy")
    src.add_argument("--split", choices=["test", "val"], help="take the shape from this split of the config's data (default test)")
    p.add_argument("--index", type=int, default=0, help="sample index within --split (default 0)")
    p.add_argument("--category", help="object category of a --file shape (segmentation models)")
    p.add_argument("--out", help="output folder (default: a fresh folder under outputs/visualize/)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    p.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"), help="pixels per stage image")
    p.add_argument("--neighbors", action="store_true", help="draw lines from each centroid to its k neighbours")
    p.add_argument("--show", action="store_true", help="also open interactive Open3D windows (needs a display)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, list[Path]]:
    """Entry point; prints and returns the written paths."""
    args = parse_args(argv)
    if args.size[0] < 16 or args.size[1] < 16:
        raise SystemExit(f"--size {args.size[0]} {args.size[1]}: both sides must be at least 16 pixels")
    name = Path(args.file).stem if args.file is not None else f"{args.split or 'test'}-{args.index}"
    try:
        out_dir = prepare_out_dir(args.out, name, args.overwrite)
    except FileExistsError as err:
        raise SystemExit(f"error: {err}") from None
    task, datamodule = load_model(args.ckpt, args.config)
    try:
        if args.file is not None:
            category = None
            if args.category is not None:
                names = list(getattr(task, "category_names", []))
                if args.category not in names:
                    raise SystemExit(f"--category {args.category!r} is not one of {names}")
                category = names.index(args.category)
            num_points = datamodule.num_points
            sample = load_file_sample(args.file, num_points, task.backbone.in_channels > 0, category=category)
        else:
            sample = sample_from_split(datamodule, args.split or "test", args.index)
    except (ValueError, IndexError) as err:  # DataFormatError is a ValueError naming the file
        raise SystemExit(f"error: {err}") from None
    analysis = analyse(task, sample, name, trained=args.ckpt is not None)
    paths = render_analysis(analysis, out_dir, tuple(args.size), args.neighbors)
    print(analysis.title)
    for kind in ("grid", "png", "ply"):
        for path in paths[kind]:
            print(f"{kind:5s} {path}")
    if args.show:
        if has_display():
            show(analysis)
        else:
            print("--show: no display here; open the PNGs or the .ply files instead", file=sys.stderr)
    return paths


if __name__ == "__main__":
    main()
