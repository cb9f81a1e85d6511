"""Small, fast CLI runs: the demo configs with a tiny model, few points and a tiny generated data set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.cli import make_cli

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs" / "demo.yaml")
DEMO_SEG = str(REPO / "configs" / "demo_seg.yaml")


def tiny_args(data_root: Path, *, epochs: int = 2, csv: bool = True) -> list[str]:
    """Overrides that shrink a demo config to a seconds-long run.

    The configs write below relative paths (``runs/...``), so tests run in a temporary working
    directory (fixture ``in_tmp``); the generated data is shared through ``data_root``.
    """
    args = [
        "--trainer.max_epochs", str(epochs),
        "--data.init_args.root", str(data_root),
        "--data.init_args.num_points", "128",
        "--data.init_args.batch_size", "16",
        "--data.init_args.num_workers", "0",
        "--data.init_args.generator.train_per_class", "12",
        "--data.init_args.generator.val_per_class", "3",
        "--data.init_args.generator.test_per_class", "4",
        "--data.init_args.generator.points", "512",
        "--model.init_args.backbone.init_args.stem_width", "16",
        "--model.init_args.backbone.init_args.num_centroids", "[32, 8]",
        "--model.init_args.backbone.init_args.widths", "[32, 64]",
        "--model.init_args.backbone.init_args.stage.k", "8",
    ]
    if csv:
        args += ["--config", str(REPO / "configs" / "logger" / "csv.yaml")]
    return args


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside a fresh temporary working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def gen_cls_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder for the tiny generated classification data set, shared by the session's CLI tests."""
    return tmp_path_factory.mktemp("generated_modelnet")


@pytest.fixture(scope="session")
def gen_seg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder for the tiny generated segmentation data set."""
    return tmp_path_factory.mktemp("generated_shapenetpart")


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test talks to W&B servers; tests that check W&B set ``WANDB_MODE=offline`` themselves."""
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE_TEST", "disabled"))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A one-epoch tiny classification run: its ``last.ckpt`` and the arguments that built it."""
    root = tmp_path_factory.mktemp("errors")
    args = ["--config", DEMO, *tiny_args(root / "data", epochs=1), "--trainer.default_root_dir", str(root / "runs"),
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={root / 'ckpt'}", "--trainer.callbacks.save_last=true"]
    cwd = os.getcwd()
    os.chdir(root)  # the configs write below relative paths
    try:
        make_cli(["fit", *args])
    finally:
        os.chdir(cwd)
    return root / "ckpt" / "last.ckpt", args
