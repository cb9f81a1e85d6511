"""Fixtures: tiny generated data sets (built once per session) and the real-sample sub-folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.synthetic import GeneratorConfig, generate

TINY = GeneratorConfig(train_per_class=4, val_per_class=2, test_per_class=2, points=300)


@pytest.fixture(scope="session")
def generated_modelnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("gen") / "generated_modelnet", "modelnet", TINY)


@pytest.fixture(scope="session")
def generated_shapenetpart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("gen") / "generated_shapenetpart", "shapenetpart", TINY)


@pytest.fixture
def shapenet_samples(real_samples: Path) -> Path:
    return real_samples / "shapenetcore_partanno_segmentation_benchmark_v0_normal"


@pytest.fixture
def resampled_samples(real_samples: Path) -> Path:
    return real_samples / "modelnet40_normal_resampled"
