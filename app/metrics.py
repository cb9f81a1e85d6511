"""Evaluation metrics that are exact under DDP.

``DistributedSampler`` pads the evaluation set so that every rank gets the same number of samples,
which double-counts a few shapes (docs/choices.md §3). These metrics keep one row per evaluated
sample together with the sample's dataset ``index``; after the cross-rank gather they drop the
duplicated indices and only then reduce. One process and N processes therefore give identical numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
)


def _first_occurrence(index: Tensor) -> Tensor:
    """Boolean mask keeping the first row of every distinct ``index`` value."""
    order = torch.argsort(index, stable=True)
    sorted_idx = index[order]
    keep_sorted = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep_sorted[1:] = sorted_idx[1:] != sorted_idx[:-1]
    keep = torch.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    return keep


class _DedupMetric(Metric):
    """Base: per-sample rows (``index`` plus named columns) kept as concatenated states."""

    full_state_update = False
    columns: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for name in self.columns:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def _append(self, index: Tensor, **cols: Tensor) -> None:
        self.index.append(index.detach().long().reshape(-1))
        for name, value in cols.items():
            getattr(self, name).append(value.detach().reshape(index.numel(), *value.shape[1:]))

    def _rows(self) -> dict[str, Tensor]:
        """The de-duplicated rows gathered from every rank."""

        def cat(x: list[Tensor] | Tensor) -> Tensor:
            return torch.cat(x) if isinstance(x, list) else x

        index = cat(self.index)
        keep = _first_occurrence(index)
        return {name: cat(getattr(self, name))[keep] for name in self.columns}


class SampleMean(_DedupMetric):
    """Mean of one value per evaluated sample (e.g. its loss), each dataset index counted once.

    ``update(value [B], index [B])``; ``compute()`` returns the mean as a scalar tensor.
    """

    columns = ("value",)

    def update(self, value: Tensor, index: Tensor) -> None:
        self._append(index, value=value)

    def compute(self) -> Tensor:
        return self._rows()["value"].mean()


class ClassificationMetrics(_DedupMetric):
    """Overall accuracy, mean class accuracy, per-class accuracy and the confusion matrix.

    ``update(logits [B, C], target [B], index [B])``; ``compute()`` returns a dict with
    ``acc`` (overall), ``macc`` (mean of per-class accuracies over the classes present),
    ``acc_per_class [C]`` (NaN for classes absent from the evaluated set) and ``confusion [C, C]``
    (rows: true class).
    """

    columns = ("pred", "target")

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def update(self, logits: Tensor, target: Tensor, index: Tensor) -> None:
        self._append(index, pred=logits.argmax(-1), target=target)

    def compute(self) -> dict[str, Tensor]:
        rows = self._rows()
        pred, target = rows["pred"], rows["target"]
        c = self.num_classes
        per_class = multiclass_accuracy(pred, target, c, average=None)
        present = torch.bincount(target, minlength=c) > 0
        per_class = torch.where(present, per_class, torch.full_like(per_class, float("nan")))
        return {
            "acc": multiclass_accuracy(pred, target, c, average="micro"),
            "macc": per_class[present].mean(),
            "acc_per_class": per_class,
            "confusion": multiclass_confusion_matrix(pred, target, c),
        }


def shape_part_iou(pred: Tensor, target: Tensor, part_mask: Tensor) -> Tensor:
    """Mean IoU of each shape over the parts of its own category (the standard ShapeNetPart rule).

    A part absent from both prediction and ground truth counts IoU 1.

    Shapes:
        pred, target: ``[B, N]`` long global part ids; part_mask: ``[B, P]`` bool, the parts of each
        shape's category. Returns ``[B]`` float.
    """
    num_parts = part_mask.shape[1]
    parts = torch.arange(num_parts, device=pred.device)
    p = pred.unsqueeze(-1) == parts  # (B, N, P)
    t = target.unsqueeze(-1) == parts
    inter = (p & t).sum(1).float()  # (B, P)
    union = (p | t).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return (iou * part_mask).sum(-1) / part_mask.sum(-1)


class PartSegmentationMetrics(_DedupMetric):
    """Instance mIoU, class mIoU and per-category mIoU for part segmentation.

    ``update(pred [B, N], target [B, N], category [B], index [B])``. Instance mIoU averages the
    per-shape mIoU over all shapes; class mIoU averages the per-category means over the categories
    present. ``compute()`` returns ``miou_instance``, ``miou_class`` and ``miou_per_category [K]``
    (NaN for categories absent from the evaluated set).
    """

    columns = ("iou", "category")

    def __init__(self, part_mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("part_mask", part_mask.bool(), persistent=False)

    def update(self, pred: Tensor, target: Tensor, category: Tensor, index: Tensor) -> None:
        iou = shape_part_iou(pred, target, self.part_mask[category])
        self._append(index, iou=iou, category=category)

    def compute(self) -> dict[str, Tensor]:
        rows = self._rows()
        iou, category = rows["iou"], rows["category"].long()
        k = self.part_mask.shape[0]
        total = torch.zeros(k, dtype=iou.dtype, device=iou.device).index_add_(0, category, iou)
        count = torch.bincount(category, minlength=k).to(iou.dtype)
        per_cat = total / count  # NaN where a category is absent (0/0)
        return {
            "miou_instance": iou.mean(),
            "miou_class": per_cat[count > 0].mean(),
            "miou_per_category": per_cat,
        }
