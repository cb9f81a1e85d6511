"""The centroid pictures of a half-precision model (``precision: bf16-true``, ``.half()``)."""

from __future__ import annotations

import numpy as np
import torch

from app.analysis import analyse
from app.cli import build_from_config
from tests.app.conftest import DEMO


def test_analysis_of_a_bf16_model_draws_float32_positions() -> None:
    """A bf16-true fit's end-of-training picture fed float32 samples to bf16 weights (dtype mismatch) before."""
    task, _ = build_from_config(DEMO)
    task = task.to(torch.bfloat16).eval()
    g = torch.Generator().manual_seed(0)
    sample = {"pos": torch.randn(512, 3, generator=g), "normal": torch.randn(512, 3, generator=g),
              "label": torch.tensor(3)}
    a = analyse(task, sample, "bf16")
    assert a.points.dtype == np.float32 and a.stages[0].centroids.dtype == np.float32
    assert [len(s.centroids) for s in a.stages] == [128, 32, 8] and "predicted" in a.title
