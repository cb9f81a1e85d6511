"""The batch contract between ``datamodules/`` and the app (the one place it is documented).

A batch is a ``dict[str, Tensor]``; every batch has a fixed number of points N (resampled on the data side by FPS
or a random subset, at cache-build time), so models get no masks.

| key              | shape     | dtype   | when                                                                      |
|------------------|-----------|---------|---------------------------------------------------------------------------|
| ``pos``          | [B, N, 3] | float32 | always; each cloud centred and scaled into the unit sphere (before        |
|                  |           |         | augmentation)                                                             |
| ``normal``       | [B, N, 3] | float32 | when ``use_normals`` and the source has normals (generated data has them) |
| ``label``        | [B]       | int64   | classification: class index into ``class_names``                          |
| ``part``         | [B, N]    | int64   | segmentation: GLOBAL part id of each point (0..num_parts-1)               |
| ``category``     | [B]       | int64   | segmentation: category index into ``category_names``                     |
| ``index``        | [B]       | int64   | always: the sample's index in its split (de-duplicates                    |
|                  |           |         | DistributedSampler padding under DDP)                                     |
| ``source_index`` | [B, N]    | int64   | ``predict`` on files: each point's row in its file                        |
|                  |           |         | (``datamodules.files.file_points``)                                       |

Up axis: y. Point order carries no meaning (training shuffles it).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Task = Literal["classification", "segmentation"]
TASK_KEYS: dict[str, tuple[str, ...]] = {
    "classification": ("pos", "label", "index"),
    "segmentation": ("pos", "part", "category", "index"),
}


def check_batch(batch: dict[str, Tensor], task: Task) -> None:
    """Raise ``ValueError`` unless ``batch`` follows the contract above."""
    missing = [k for k in TASK_KEYS[task] if k not in batch]
    if missing:
        raise ValueError(f"{task} batch lacks keys {missing}; has {sorted(batch)}")
    pos = batch["pos"]
    if pos.dim() != 3 or pos.shape[-1] != 3 or pos.dtype != torch.float32:
        raise ValueError(f"pos must be float32 [B, N, 3], got {pos.dtype} {list(pos.shape)}")
    b, n = pos.shape[:2]
    expected = {
        "normal": ((b, n, 3), torch.float32),
        "label": ((b,), torch.int64),
        "part": ((b, n), torch.int64),
        "category": ((b,), torch.int64),
        "index": ((b,), torch.int64),
        "source_index": ((b, n), torch.int64),
    }
    for key, (shape, dtype) in expected.items():
        if key in batch and (tuple(batch[key].shape) != shape or batch[key].dtype != dtype):
            raise ValueError(f"{key} must be {dtype} {list(shape)}, got {batch[key].dtype} {list(batch[key].shape)}")
