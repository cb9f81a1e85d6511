"""Learning tests: the demo models beat chance by a wide margin on generated data, in well under a minute."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import make_cli
from tests.app.conftest import DEMO, DEMO_SEG, REPO

#: A shrunken demo run: fewer shapes, points and epochs than `make demo`, same model family and recipe.
SMALL = [
    "--trainer.max_epochs", "8",
    "--data.init_args.num_points", "256",
    "--data.init_args.num_workers", "0",
    "--data.init_args.generator.train_per_class", "30",
    "--data.init_args.generator.val_per_class", "2",
    "--data.init_args.generator.test_per_class", "10",
    "--data.init_args.generator.points", "1024",
    "--model.init_args.backbone.init_args.num_centroids", "[64, 16, 4]",
    "--config", str(REPO / "configs" / "logger" / "csv.yaml"),
]


def _train_and_test(config: str, root: Path) -> tuple[dict[str, float], object]:
    """Fit the shrunken demo run on fresh generated data in ``root``; the test metrics and the data module."""
    cli = make_cli(["--config", config, *SMALL, "--data.init_args.root", str(root)], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    (result,) = cli.trainer.test(cli.model, cli.datamodule, ckpt_path="last")
    return result, cli.datamodule


@pytest.mark.slow
def test_classifier_beats_chance(in_tmp: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    result, data = _train_and_test(DEMO, tmp_path_factory.mktemp("learn_cls"))
    chance = 1 / data.num_classes
    assert result["test/acc"] >= 6 * chance, f"test accuracy {result['test/acc']:.3f} vs chance {chance:.3f}"


@pytest.mark.slow
def test_segmenter_beats_chance(in_tmp: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    result, _ = _train_and_test(DEMO_SEG, tmp_path_factory.mktemp("learn_seg"))
    # chance: uniform guessing among a category's 2-3 parts gives an instance mIoU around 0.3
    assert result["test/miou_instance"] >= 0.6, f"instance mIoU {result['test/miou_instance']:.3f}"
