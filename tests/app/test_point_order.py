"""The paper-scale classifier (configs/modelnet40.yaml) answers the same for a cloud in any point order."""

from __future__ import annotations

from pathlib import Path

import torch

from app.cli import build_from_config

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "modelnet40.yaml")


def _sphere(n: int, seed: int) -> torch.Tensor:
    p = torch.randn(1, n, 3, generator=torch.Generator().manual_seed(seed))
    return p / p.norm(dim=-1, keepdim=True) * torch.tensor([1.0, 0.7, 0.5])  # an ellipsoid's surface


def test_modelnet40_classifier_logits_do_not_depend_on_point_order() -> None:
    model, _ = build_from_config(CONFIG)
    model.eval()
    pos = _sphere(1024, 0)
    views = {
        "permuted": pos[:, torch.randperm(1024, generator=torch.Generator().manual_seed(1))],
        "sorted along x": pos.gather(1, pos[..., :1].argsort(1).expand(-1, -1, 3)),
    }
    with torch.no_grad():
        ref = model(pos)
        for name, view in views.items():
            diff = (model(view) - ref).abs().max().item()
            assert diff <= 1e-4, f"{name}: logits differ by {diff:.2e}"
