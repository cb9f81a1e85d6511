"""Metrics against hand-computed examples, and the DDP de-duplication rule."""

from __future__ import annotations

import math

import pytest
import torch

from app.metrics import ClassificationMetrics, PartSegmentationMetrics, shape_part_iou

# Two categories: category 0 owns parts {0, 1}, category 1 owns parts {2, 3, 4}.
PART_MASK = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)


def test_shape_iou_by_hand() -> None:
    # Shape of category 0, 4 points. target: 0 0 1 1; pred: 0 1 1 1.
    # part 0: inter 1, union 2 → 0.5; part 1: inter 2, union 3 → 2/3. mean = 7/12.
    pred = torch.tensor([[0, 1, 1, 1]])
    target = torch.tensor([[0, 0, 1, 1]])
    iou = shape_part_iou(pred, target, PART_MASK[[0]])
    assert iou.item() == pytest.approx(7 / 12)


def test_part_absent_from_both_counts_one() -> None:
    # Category 1 (parts 2, 3, 4); neither prediction nor target uses part 4 → IoU(4) = 1.
    # part 2: pred {0,1}, target {0} → 1/2; part 3: pred {2,3}, target {1,2,3} → 2/3; part 4 → 1.
    pred = torch.tensor([[2, 2, 3, 3]])
    target = torch.tensor([[2, 3, 3, 3]])
    iou = shape_part_iou(pred, target, PART_MASK[[1]])
    assert iou.item() == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


def test_instance_and_class_miou() -> None:
    metric = PartSegmentationMetrics(PART_MASK)
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]])
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 3, 3, 3]])
    metric.update(pred, target, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2]))
    out = metric.compute()
    shape = [7 / 12, 1.0, (1 / 2 + 2 / 3 + 1) / 3]
    assert out["miou_instance"].item() == pytest.approx(sum(shape) / 3)
    assert out["miou_class"].item() == pytest.approx(((shape[0] + shape[1]) / 2 + shape[2]) / 2)
    assert out["miou_per_category"].tolist() == pytest.approx([(shape[0] + shape[1]) / 2, shape[2]])


def test_duplicated_samples_count_once() -> None:
    """DistributedSampler pads by repeating samples: the repeated index must not count twice."""
    metric = ClassificationMetrics(num_classes=3)
    logits = torch.eye(3)[[0, 1, 2, 0]]  # predictions 0 1 2 0
    target = torch.tensor([0, 1, 1, 0])  # sample 2 is wrong
    metric.update(logits, target, torch.tensor([0, 1, 2, 3]))
    metric.update(logits[[2]], target[[2]], torch.tensor([2]))  # padding repeats sample 2
    out = metric.compute()
    assert out["acc"].item() == pytest.approx(3 / 4)
    # per class: class 0 → 2/2, class 1 → 1/2, class 2 absent → NaN; mean over present = 0.75
    per_class = out["acc_per_class"].tolist()
    assert per_class[:2] == pytest.approx([1.0, 0.5]) and math.isnan(per_class[2])
    assert out["macc"].item() == pytest.approx(0.75)
    assert out["confusion"].tolist() == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]
