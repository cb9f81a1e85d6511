"""Shared fixtures: where the real sample files live (``../shared/real-samples``)."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "real-samples"


@pytest.fixture
def real_samples() -> Path:
    """Folder of the real sample files; the test is skipped with the reason when it is absent."""
    if not REAL_SAMPLES.is_dir():
        pytest.skip(f"real sample files not found at {REAL_SAMPLES} (they live in the team's shared/ folder)")
    return REAL_SAMPLES
