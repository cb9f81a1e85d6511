"""Callbacks: segmentation predictions of user files map back to every row of the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch
from lightning.pytorch import Trainer
from torch import Tensor
from torch.utils.data import DataLoader

from app.callbacks import PredictionWriter, nearest_parts
from app.tasks import SegmentationTask
from datamodules.files import PointFilesDataset
from models.backbone import BackboneOutput
from tests.app.test_tasks import PART_MASK, _backbone


def test_nearest_parts() -> None:
    sampled = np.array([[0.0, 0, 0], [1, 0, 0], [0, 5, 0]])
    points = np.array([[0.9, 0, 0], [0, 4, 0], [0.1, 0, 0], [0, 5, 0]])
    assert nearest_parts(points, sampled, np.array([7, 8, 9])).tolist() == [8, 9, 7, 9]


def _by_side(self: SegmentationTask, out: BackboneOutput, batch: dict[str, Tensor]) -> Tensor:
    """A segmentation that is right by construction: part 2 left of the cloud's centre (x < 0), part 3 right."""
    x = batch["pos"][..., 0]  # (B, N)
    logits = torch.full((*x.shape, 5), float("-inf"))
    logits[..., 2], logits[..., 3] = -x, x
    return logits


@pytest.mark.parametrize("rows", [500, 128])  # more rows than the model's N = 128, and exactly N
def test_segmentation_predictions_line_up_with_the_files_rows(tmp_path: Path, monkeypatch, rows: int) -> None:
    """Two blobs far apart, their rows interleaved at random in the file: ``parts[r]`` is row r's blob, for
    every row, and the ``.ply`` holds the file's points in its order, coloured alike."""
    rng = np.random.default_rng(rows)
    side = rng.integers(0, 2, rows)  # 0: left blob, 1: right blob
    pos = (rng.normal(size=(rows, 3)) * 0.3 + np.where(side[:, None] == 1, 3.0, -3.0) * [1, 0, 0]).astype(np.float32)
    files = [tmp_path / "cloud.npy", tmp_path / "cloud.txt"]
    np.save(files[0], pos)
    np.savetxt(files[1], pos[::-1], delimiter=",")  # the same points in reverse row order
    monkeypatch.setattr(SegmentationTask, "head_logits", _by_side)
    task = SegmentationTask(_backbone(), num_parts=5, num_categories=2, part_mask=PART_MASK).eval()
    writer = PredictionWriter()
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[writer], default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False)
    data = PointFilesDataset(files, num_points=128, use_normals=False, category=1)
    trainer.predict(task, DataLoader(data, batch_size=2), return_predictions=False)

    results = json.loads(writer.path.read_text())
    assert [r["input"] for r in results] == [str(f) for f in files]
    for result, sides, points in zip(results, (side, side[::-1]), (pos, pos[::-1])):
        assert result["parts"] == (2 + sides).tolist()
        assert len(result["sampled_rows"]) == 128 and set(result["sampled_rows"]) <= set(range(rows))
        ply = o3d.io.read_point_cloud(result["ply"])
        np.testing.assert_allclose(np.asarray(ply.points), points, atol=1e-5)
        colors = np.asarray(ply.colors)
        assert all(len(np.unique(colors[sides == s], axis=0)) == 1 for s in (0, 1))
