"""Where a run writes: its folder, and fresh file names that never overwrite anything."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger


def run_dir(trainer: Trainer) -> Path:
    """The folder of this run: the logger's version folder (W&B: ``save_dir/project/run-id``)."""
    logger = trainer.logger
    if isinstance(logger, WandbLogger):
        return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / str(logger.version)
    if logger is not None and getattr(logger, "log_dir", None):
        return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


def fresh_path(path: Path) -> Path:
    """``path`` if it does not exist yet, else ``stem-1.ext``, ``stem-2.ext``, ...: never overwrite."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
