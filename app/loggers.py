"""Weights & Biases logger that works with no account and no network.

Online when the user is logged in (``WANDB_API_KEY`` or a ``wandb login`` entry in ``~/.netrc``);
offline otherwise or with ``WANDB_MODE=offline`` (it prints the ``wandb sync`` command at the end);
silent with ``WANDB_MODE=disabled``.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info


def wandb_logged_in() -> bool:
    """True when W&B credentials are available locally (no network call)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class AutoWandbLogger(WandbLogger):
    """``WandbLogger`` that goes offline by itself when the user is not logged in."""

    def __init__(self, project: str = "centroid-transformer", save_dir: str = "runs", **kwargs: Any) -> None:
        mode = os.environ.get("WANDB_MODE", "")
        offline = mode == "offline" or (mode != "disabled" and not wandb_logged_in())
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, offline=offline, **kwargs)
        self._offline_note = offline

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._offline_note and self._experiment is not None:
            rank_zero_info(f"W&B ran offline; upload this run with:  wandb sync {Path(self._experiment.dir).parent}")
