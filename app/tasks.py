"""LightningModules: classification and part segmentation on top of the centroid backbone.

A task composes a backbone (injected from the config by ``class_path``) with a head it builds
itself from plain numbers. Built through the CLI (``app.cli``), the checkpoint stores the resolved
config as plain data, so ``Task.load_from_checkpoint(path, weights_only=True)`` rebuilds the model
with nothing else at hand (style.md, "the Lightning layer").
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from app.metrics import ClassificationMetrics, PartSegmentationMetrics
from models.backbone import BackboneOutput, CentroidBackbone
from models.heads import ClassificationHead, SegmentationHead

EVAL_SPLITS = ("val", "test")


def _adamw(params: Any) -> torch.optim.Optimizer:
    """Default optimiser when the config names none (configs normally set ``optimizer``)."""
    return torch.optim.AdamW(params)


def masked_cross_entropy(logits: Tensor, target: Tensor, allowed: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean per-point cross-entropy over each shape's own parts, label smoothing spread over those parts only.

    Shapes:
        logits: ``[B, N, P]`` with −inf at foreign parts; target: ``[B, N]``; allowed: ``[B, P]`` bool.
    """
    logp = logits.log_softmax(-1)  # (B, N, P), −inf at foreign parts
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, N)
    smooth = -logp.masked_fill(~allowed.unsqueeze(1), 0.0).sum(-1) / allowed.sum(-1, keepdim=True)
    return ((1 - label_smoothing) * nll + label_smoothing * smooth).mean()


class _PointTask(LightningModule):
    """What both tasks share: input features, optimiser + warm-up/cosine schedule, logging."""

    backbone: CentroidBackbone
    eval_metrics: nn.ModuleDict
    test_results: dict[str, Tensor]

    def __init__(self, optimizer: OptimizerCallable, warmup_epochs: int, min_lr_ratio: float) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.warmup_epochs = warmup_epochs
        self.min_lr_ratio = min_lr_ratio

    def features(self, batch: dict[str, Tensor], return_attention: bool = False) -> BackboneOutput:
        """Run the backbone on a batch; normals are fed when the backbone expects 3 extra channels."""
        x = batch.get("normal") if self.backbone.in_channels else None
        return self.backbone.forward_features(batch["pos"], x, return_attention=return_attention)

    def configure_optimizers(self) -> dict[str, Any]:
        """The configured optimiser with a per-epoch linear warm-up then cosine decay to ``min_lr_ratio``.

        The schedule spans ``trainer.max_epochs``. The loss is a per-sample mean, so under DDP the
        effective batch is ``devices * batch_size`` at the same learning rate: scale ``lr`` linearly
        with the global batch when you change the number of devices.
        """
        optimizer = self.optimizer(self.parameters())
        total = max(int(self.trainer.max_epochs or 1), 1)
        warmup, floor = self.warmup_epochs, self.min_lr_ratio

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            progress = (epoch - warmup) / max(total - warmup, 1)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _end_eval(self, split: str) -> dict[str, Tensor]:
        values = self.eval_metrics[split].compute()
        self.eval_metrics[split].reset()
        self._log_scalars(split, values)
        return values

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._end_eval("test")

    def _log_scalars(self, split: str, values: dict[str, Tensor]) -> None:
        # Values from the de-duplicating metrics are already identical on every rank.
        for name, value in values.items():
            if value.dim() == 0:
                self.log(f"{split}/{name}", value, prog_bar=name in ("acc", "miou_instance"))


class ClassificationTask(_PointTask):
    """Shape classification: backbone → max+mean pool → MLP, cross-entropy with label smoothing.

    Metrics (``val/``, ``test/``): ``acc`` (overall), ``macc`` (mean class accuracy); at test also the
    per-class accuracy and the confusion matrix, kept in ``self.test_results`` for callbacks.
    """

    def __init__(
        self,
        backbone: CentroidBackbone,
        num_classes: int,
        class_names: list[str] | None = None,
        head_hidden: list[int] = [512, 256],
        dropout: float = 0.5,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = _adamw,
        warmup_epochs: int = 0,
        min_lr_ratio: float = 0.01,
    ) -> None:
        super().__init__(optimizer, warmup_epochs, min_lr_ratio)
        self.save_hyperparameters()
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, num_classes, hidden=head_hidden, dropout=dropout)
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.label_smoothing = label_smoothing
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.eval_metrics = nn.ModuleDict({s: ClassificationMetrics(num_classes) for s in EVAL_SPLITS})
        self.test_results: dict[str, Tensor] = {}

    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        """Logits ``[B, num_classes]`` of clouds ``pos [B, N, 3]`` (features ``x [B, N, C]``)."""
        return self.head(self.backbone(pos, x))

    def _step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        logits = self.head(self.features(batch).stages[-1].feat)
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        bs = batch["label"].shape[0]
        self.log(f"{split}/loss", loss, batch_size=bs, sync_dist=split != "train", prog_bar=split == "train")
        if split == "train":
            self.train_acc(logits, batch["label"])
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=bs)
        else:
            self.eval_metrics[split].update(logits, batch["label"], batch["index"])
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Class probabilities ``[B, num_classes]`` and predicted class ``[B]`` per cloud."""
        probs = self.head(self.features(batch).stages[-1].feat).softmax(-1)
        return {"index": batch["index"], "probs": probs, "pred": probs.argmax(-1)}


class SegmentationTask(_PointTask):
    """Part segmentation: backbone → feature propagation to every point → per-point part logits.

    **choice**: logits of parts outside the shape's category are masked to −inf for both the loss
    and the prediction (predictions are restricted to the category's parts, as the metric assumes).
    Metrics: ``miou_instance``, ``miou_class`` and, at test, the per-category mIoU.
    """

    def __init__(
        self,
        backbone: CentroidBackbone,
        num_parts: int,
        num_categories: int,
        part_mask: list[list[int]],
        category_names: list[str] | None = None,
        head_hidden: int = 128,
        dropout: float = 0.5,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = _adamw,
        warmup_epochs: int = 0,
        min_lr_ratio: float = 0.01,
    ) -> None:
        super().__init__(optimizer, warmup_epochs, min_lr_ratio)
        self.save_hyperparameters()
        mask = torch.tensor(part_mask, dtype=torch.bool)
        if mask.shape != (num_categories, num_parts):
            raise ValueError(f"part_mask has shape {tuple(mask.shape)}, expected ({num_categories}, {num_parts})")
        self.backbone = backbone
        self.head = SegmentationHead(
            backbone.channels, num_parts, num_categories=num_categories, hidden=head_hidden, dropout=dropout
        )
        self.register_buffer("part_mask", mask, persistent=False)
        self.category_names = category_names or [str(i) for i in range(num_categories)]
        self.label_smoothing = label_smoothing
        self.eval_metrics = nn.ModuleDict({s: PartSegmentationMetrics(mask) for s in EVAL_SPLITS})
        self.test_results: dict[str, Tensor] = {}

    def masked_logits(self, out: BackboneOutput, category: Tensor) -> Tensor:
        """Per-point logits ``[B, N, P]`` with other categories' parts set to −inf."""
        logits = self.head(out, category)
        return logits.masked_fill(~self.part_mask[category].unsqueeze(1), float("-inf"))

    def forward(self, pos: Tensor, category: Tensor, x: Tensor | None = None) -> Tensor:
        """Masked part logits ``[B, N, num_parts]`` of clouds ``pos [B, N, 3]`` of category ``[B]``."""
        return self.masked_logits(self.backbone.forward_features(pos, x), category)

    def _step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        logits = self.masked_logits(self.features(batch), batch["category"])
        target = batch["part"]
        loss = masked_cross_entropy(logits, target, self.part_mask[batch["category"]], self.label_smoothing)
        bs = target.shape[0]
        self.log(f"{split}/loss", loss, batch_size=bs, sync_dist=split != "train", prog_bar=split == "train")
        if split != "train":
            self.eval_metrics[split].update(logits.argmax(-1), target, batch["category"], batch["index"])
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per-point part labels ``[B, N]`` (restricted to each shape's category)."""
        logits = self.masked_logits(self.features(batch), batch["category"])
        return {"index": batch["index"], "pos": batch["pos"], "part": logits.argmax(-1)}
