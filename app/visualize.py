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
from pathlib import Path

from lightning import LightningDataModule, LightningModule

from app import render
from app.analysis import Analysis, analyse, render_analysis, sample_from_split
from app.checkpoint import check_data_settings, load_datamodule, load_task, read_checkpoint
from app.cli import build_from_config
from app.errors import run_with_one_line_errors
from app.paths import fresh_path
from app.tasks import SegmentationTask
from datamodules.files import load_file_sample

DEFAULT_CONFIG = "configs/demo.yaml"
DEFAULT_OUT_ROOT = Path("outputs/visualize")


# ---------------------------------------------------------------------------------------------- inputs
def load_model(ckpt: str | None, config: str | None) -> tuple[LightningModule, LightningDataModule]:
    """The task and data module to draw.

    With ``ckpt``: the trained task and the data settings it was trained with, both from the checkpoint
    (a ``config`` given too supplies the data module, and must agree on the data settings, else a
    :class:`~app.checkpoint.CheckpointError`). Without: the untrained task of ``config`` (default demo).
    """
    if ckpt is None:
        task, datamodule = build_from_config(config or DEFAULT_CONFIG)
        return task.eval(), datamodule
    task = load_task(ckpt)
    if config is None:
        return task.eval(), load_datamodule(ckpt)
    _, datamodule = build_from_config(config)
    check_data_settings(ckpt, read_checkpoint(ckpt).get("datamodule_hyper_parameters") or {}, datamodule)
    return task.eval(), datamodule


# ---------------------------------------------------------------------------------------------- output
def prepare_out_dir(out: str | Path | None, name: str, overwrite: bool = False) -> Path:
    """The output folder (not yet created): ``out`` (refused when it holds files, unless ``overwrite``) or a fresh one
    for ``name``."""
    if out is None:
        path = fresh_path(DEFAULT_OUT_ROOT / name)
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"--out {path} is a file, not a folder")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"--out {path} exists and is not empty: pass --overwrite or choose another folder")
    return path


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
    p.add_argument("--config", help=f"model + data config (default: the checkpoint's own data settings; "
                                     f"without --ckpt {DEFAULT_CONFIG})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--file", help="a point cloud or mesh of yours: .off, .ply, .txt, .npy")
    src.add_argument("--split", choices=["test", "val"],
                     help="take the shape from this split of the config's data (default test)")
    p.add_argument("--index", type=int, default=0, help="sample index within --split (default 0)")
    p.add_argument("--category", help="object category of a --file shape (segmentation models)")
    p.add_argument("--out", help="output folder (default: a fresh folder under outputs/visualize/)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    p.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"), help="pixels per stage image")
    p.add_argument("--neighbors", action="store_true", help="draw lines from each centroid to its k neighbours")
    p.add_argument("--show", action="store_true", help="also open interactive Open3D windows (needs a display)")
    return p.parse_args(argv)


def draw(argv: list[str]) -> dict[str, list[Path]]:
    """The command without the error wrapper; prints and returns the written paths."""
    args = parse_args(argv)
    if args.size[0] < 16 or args.size[1] < 16:
        raise ValueError(f"--size {args.size[0]} {args.size[1]}: both sides must be at least 16 pixels")
    name = Path(args.file).stem if args.file is not None else f"{args.split or 'test'}-{args.index}"
    out_dir = prepare_out_dir(args.out, name, args.overwrite)
    task, datamodule = load_model(args.ckpt, args.config)
    if args.file is not None:
        category = None
        if args.category is not None:
            names = task.category_names if isinstance(task, SegmentationTask) else []
            if args.category not in names:
                raise ValueError(f"--category {args.category!r} is not one of {names}")
            category = names.index(args.category)
        # the data settings the model was trained with (the checkpoint's; a --config must agree with them)
        sample = load_file_sample(args.file, datamodule.num_points, task.backbone.in_channels > 0,
                                  sampling=datamodule.sampling, category=category)
    else:
        sample = sample_from_split(datamodule, args.split or "test", args.index)
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


def main(argv: list[str] | None = None) -> dict[str, list[Path]]:
    """Entry point: one-line errors (``error: <file>: <problem>``, exit 1); ``--verbose`` for the traceback."""
    return run_with_one_line_errors(draw, argv)


if __name__ == "__main__":
    main()
