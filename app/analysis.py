"""The model analysis behind every centroid picture: per-stage centroids, assignments, masses, predictions.

Used by ``python -m app.visualize``, the W&B callback, the demo and the notebook. ``analyse`` runs a task
on one sample; ``render_analysis`` writes the PNGs, the grid and the ``.ply`` files (colour rule and
sphere sizes in :mod:`app.render`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from app import render
from app.tasks import ClassificationTask, PointTask


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


def sample_from_split(datamodule: object, split: str, index: int) -> dict[str, Tensor]:
    """Sample ``index`` of a data set split (``test`` or ``val``), unbatched as the dataset yields it."""
    datamodule.prepare_data()
    datamodule.setup("test" if split == "test" else "validate")
    dataset = (datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()).dataset
    if not 0 <= index < len(dataset):
        raise IndexError(f"--index {index} is out of range: the {split} split has {len(dataset)} samples")
    return dataset[index]


@torch.no_grad()
def analyse(task: PointTask, sample: dict[str, Tensor], name: str = "", trained: bool = True) -> Analysis:
    """Run the task on one unbatched sample and collect the per-stage centroids and assignments."""
    # floating inputs in the model's dtype (a bf16-true or .half() model), positions back in float32 for drawing
    def batched(v: Tensor) -> Tensor:
        return v.unsqueeze(0).to(task.device, task.dtype if v.is_floating_point() else None)

    batch = {k: batched(v) for k, v in sample.items()}
    out = task.features(batch, return_attention=True)
    points = out.pos[0].float().cpu().numpy()
    stages, inputs = [], [points]
    for st in out.stages:
        stages.append(render.StageArrays(st.pos[0].float().cpu().numpy(), st.assignment[0].cpu().numpy(),
                                         st.neighbors[0].cpu().numpy()))
        inputs.append(stages[-1].centroids)
    status = "" if trained else " · untrained"
    parts = true_parts = None
    if isinstance(task, ClassificationTask):
        probs = task.logits(batch, out).float().softmax(-1)[0]
        pred = int(probs.argmax())
        truth = f"true: {task.class_names[int(sample['label'])]} · " if "label" in sample else ""
        title = f"{name} · {truth}predicted: {task.class_names[pred]} ({float(probs[pred]):.0%}){status}"
    else:
        if "category" not in sample:
            raise ValueError("segmentation needs the shape's category: pass --category NAME")
        parts = task.logits(batch, out).argmax(-1)[0].cpu().numpy()
        true_parts = sample["part"].numpy() if "part" in sample else None
        title = f"{name} · category: {task.names[int(sample['category'])]}{status}"
    return Analysis(points, stages, title.strip(" ·"), parts, true_parts, inputs[:-1])


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
    masses = render.centroid_masses([st.assignment for st in a.stages], [len(st.centroids) for st in a.stages])
    panels, names, ply = [], [], []
    per_stage = zip(a.stages, point_colors, cent_colors, a.stage_inputs, masses)
    for s, (st, pc, cc, inp, mass) in enumerate(per_stage, start=1):
        lines = inp[st.neighbors] if neighbors and st.neighbors is not None else None  # (M, k, 3)
        title = f"stage {s}: {len(inp)} → {len(st.centroids)} centroids"
        panels.append((a.points, pc, st.centroids, cc, lines, title, mass))
        names.append(f"stage{s}")
        ply += [render.write_ply(out_dir / f"stage{s}_points.ply", a.points, pc),
                render.write_ply(out_dir / f"stage{s}_centroids.ply", st.centroids, cc)]
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
