"""Shared fixtures: where the real sample files live (``../shared/real-samples``); Triton interpreted without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton's kernels then run on CPU tensors, interpreted (read when it is imported)
    os.environ.setdefault("TRITON_INTERPRET", "1")

REAL_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "real-samples"


@pytest.fixture
def real_samples() -> Path:
    """Folder of the real sample files; the test is skipped with the reason when it is absent."""
    if not REAL_SAMPLES.is_dir():
        pytest.skip(f"real sample files not found at {REAL_SAMPLES} (they live in the team's shared/ folder)")
    return REAL_SAMPLES
