"""The batch contract of datamodules/batch.py."""

from __future__ import annotations

import pytest
import torch

from datamodules.batch import check_batch


def test_contract_accepts_and_rejects() -> None:
    b = {"pos": torch.zeros(2, 5, 3), "label": torch.zeros(2, dtype=torch.long), "index": torch.arange(2)}
    check_batch(b, "classification")
    with pytest.raises(ValueError, match="lacks keys"):
        check_batch(b, "segmentation")
    with pytest.raises(ValueError, match="label must be"):
        check_batch({**b, "label": b["label"].int()}, "classification")
