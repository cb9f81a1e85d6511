"""LightningModules: classification and part segmentation on top of the centroid backbone.

A task composes a backbone (injected from the config by ``class_path``) with a head it builds
itself from plain numbers. Built through the CLI (``app.cli``), the checkpoint stores the resolved
config as plain data, so ``Task.load_from_checkpoint(path, weights_only=True)`` rebuilds the model
with nothing else at hand (docs/choices.md §2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from app.metrics import ClassificationMetrics, PartSegmentationMetrics, SampleMean
from datamodules.base import PointCloudDataModule
from datamodules.seeding import derived_seed
from models.backbone import BackboneOutput, CentroidBackbone
from models.heads import ClassificationHead, SegmentationHead

EVAL_SPLITS = ("val", "test")
CheckpointKind = Literal["last", "best", "other", "none"]

# Test-time voting views, the kind the field's ModelNet voting uses: a per-axis (anisotropic) scale and a
# shift, with the ranges of the training augmentation (datamodules.transforms.Augment).
VOTE_SCALE = (0.8, 1.25)
VOTE_TRANSLATE = 0.1


def _adamw(params: Any) -> torch.optim.Optimizer:
    """Default optimiser when the config names none (configs normally set ``optimizer``)."""
    return torch.optim.AdamW(params)


def masked_cross_entropy(logits: Tensor, target: Tensor, allowed: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Each shape's mean per-point cross-entropy over its own parts, label smoothing spread over those parts only.

    Shapes:
        logits: ``[B, N, P]`` with −inf at foreign parts; target: ``[B, N]``; allowed: ``[B, P]`` bool.
        Returns ``[B]`` (the loss of the batch is its mean: every shape has N points).
    """
    logp = logits.log_softmax(-1)  # (B, N, P), −inf at foreign parts
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, N)
    smooth = -logp.masked_fill(~allowed.unsqueeze(1), 0.0).sum(-1) / allowed.sum(-1, keepdim=True)
    return ((1 - label_smoothing) * nll + label_smoothing * smooth).mean(-1)


def vote_transforms(index: Tensor, views: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Per-sample voting views: anisotropic scale in ``VOTE_SCALE`` and shift in ``±VOTE_TRANSLATE``.

    Each sample's views depend only on ``(seed, dataset index)``, never on the batch it lands in, the
    rank or the global RNG, so 1 and N processes vote on identical views.

    Shapes:
        index: ``[B]`` dataset indices. Returns ``scale, shift``: ``[V, B, 3]`` float32 each (CPU).
    """
    rngs = [np.random.default_rng([seed, i]) for i in index.tolist()]
    scale = np.stack([rng.uniform(*VOTE_SCALE, size=(views, 3)) for rng in rngs], axis=1)  # (V, B, 3)
    shift = np.stack([rng.uniform(-VOTE_TRANSLATE, VOTE_TRANSLATE, size=(views, 3)) for rng in rngs], axis=1)
    return torch.from_numpy(scale).float(), torch.from_numpy(shift).float()


def checkpoint_kind(ckpt_path: str | None, checkpoint: dict[str, Any] | None) -> CheckpointKind:
    """Which checkpoint a test used: ``last``, ``best``, ``other`` (neither) or ``none`` (current weights).

    Decided from the ``ModelCheckpoint`` states stored inside the checkpoint: a callback records the file it
    writes as its ``last_model_path`` (``save_last``) or ``best_model_path`` before writing it. ``best`` needs a
    ``monitor``; a monitor-less callback's file is the run's most recent epoch, so ``last``. Files are compared
    by name, so a moved run folder still resolves.
    """
    if ckpt_path is None:
        return "none"
    name = Path(ckpt_path).name
    states = [v for v in (checkpoint or {}).get("callbacks", {}).values()  # ModelCheckpoint and its subclasses
              if isinstance(v, dict) and "best_model_path" in v]
    if any(Path(st.get("last_model_path") or "").name == name for st in states):
        return "last"
    for st in states:
        if Path(st.get("best_model_path") or "").name == name:
            return "best" if st.get("monitor") else "last"
    return "other"


class PointTask(LightningModule):
    """What both tasks share: input features, optimiser + warm-up/cosine schedule, logging, and ``compile``
    (``--model.init_args.compile true``: the backbone runs under ``torch.compile``, see :meth:`configure_model`).

    What callbacks and pictures read (declared here, so no caller probes a task for them):

    Attributes:
        names: the names of the test's per-row results: class names (classification) or category names
            (segmentation).
        test_results: the last test's metrics, per-class/per-category tensors included (``{}`` before a test).
        test_checkpoint: which weights the last test used (``path``, ``kind``, ``epoch``); ``None`` before a test.
    """

    backbone: CentroidBackbone
    eval_metrics: nn.ModuleDict
    names: list[str]
    test_results: dict[str, Tensor]
    test_checkpoint: dict[str, Any] | None

    def __init__(self, optimizer: OptimizerCallable, warmup_epochs: int, min_lr_ratio: float, compile: bool) -> None:
        super().__init__()
        self.compile_backbone = compile
        self._compiled_features: Any = None  # the backbone's forward_features under torch.compile (configure_model)
        self.optimizer = optimizer
        self.warmup_epochs = warmup_epochs
        self.min_lr_ratio = min_lr_ratio
        self.test_checkpoint = None  # set at test start
        self.test_results = {}  # set at test end
        self._loaded_checkpoint: dict[str, Any] | None = None
        # val/test loss: the mean of per-sample losses with DistributedSampler's padded duplicates counted once
        self.eval_loss = nn.ModuleDict({s: SampleMean() for s in EVAL_SPLITS})

    def configure_model(self) -> None:
        """With ``compile``, the backbone's forward runs under ``torch.compile`` (docs/operator.md §7: 1.38× faster
        training steps on an H200 after about three minutes of compiling). Done once, whatever the number of
        Trainer calls; the weights and their checkpoint keys stay as they are."""
        if self.compile_backbone and self._compiled_features is None:
            self._compiled_features = torch.compile(self.backbone.forward_features)

    def logits(self, batch: dict[str, Tensor], out: BackboneOutput | None = None) -> Tensor:
        """The task's logits for a batch: the one path used by every step, ``predict`` and ``forward``.

        ``out``: the backbone output of this batch when the caller already has it (e.g. with attention).
        """
        return self.head_logits(self.features(batch) if out is None else out, batch)

    def head_logits(self, out: BackboneOutput, batch: dict[str, Tensor]) -> Tensor:
        """The head on the backbone output (the only place a task calls its head)."""
        raise NotImplementedError

    def features(self, batch: dict[str, Tensor], return_attention: bool = False) -> BackboneOutput:
        """Run the backbone on a batch; normals are fed when the backbone expects 3 extra channels."""
        x = batch.get("normal") if self.backbone.in_channels else None
        if self._compiled_features is not None and not return_attention:  # attention maps (pictures) run eager
            return self._compiled_features(batch["pos"], x)
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

    def on_fit_start(self) -> None:
        """Checks the data module's contract, and pairs the dropout stream with its ``data_seed``.

        ``sampling: prefix`` is a contract that clouds arrive in farthest-point order: refuse to train on a data
        module that does not order its augmented training clouds (docs/batch.md §5). With a ``data_seed``, the
        global RNG, which the model's construction consumed in its own way, is re-seeded from ``(data_seed,
        global rank)`` (docs/reporting.md, "Paired seeds"); a resumed fit keeps the checkpoint's RNG state.
        """
        data = self.trainer.datamodule
        if not isinstance(data, PointCloudDataModule):
            return
        if self.backbone.stages[0].sampling == "prefix" and not data.fps_order:
            raise ValueError(
                "the backbone's sampling: prefix takes the first M points as seeds, but the data module does not put "
                "training clouds in FPS order: use sampling: fps (the default) or set data fps_order: true"
            )
        if data.data_seed is not None and self.trainer.ckpt_path is None:
            torch.manual_seed(derived_seed(data.data_seed, self.global_rank))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The tested file's own ModelCheckpoint states, for on_test_start: the test trainer's callbacks may differ.
        states = {k: v for k, v in checkpoint.get("callbacks", {}).items()  # ModelCheckpoint and its subclasses
                  if isinstance(v, dict) and "best_model_path" in v}
        self._loaded_checkpoint = {"callbacks": states, "epoch": checkpoint.get("epoch")}

    def on_test_start(self) -> None:
        """Record which weights are tested (``trainer.ckpt_path``, its kind and epoch) and log it as hparams."""
        path = self.trainer.ckpt_path
        loaded = self._loaded_checkpoint if path is not None else None
        self.test_checkpoint = {
            "path": None if path is None else str(path),
            "kind": checkpoint_kind(path, loaded),
            "epoch": None if loaded is None else loaded["epoch"],
        }
        for logger in self.loggers:
            logger.log_hyperparams({"test_checkpoint": self.test_checkpoint})

    def _eval_values(self, split: str) -> dict[str, Tensor]:
        """Compute and reset the split's metrics and loss."""
        values = {**self.eval_metrics[split].compute(), "loss": self.eval_loss[split].compute()}
        self.eval_metrics[split].reset()
        self.eval_loss[split].reset()
        return values

    def _log_loss(self, split: str, per_sample: Tensor, index: Tensor) -> Tensor:
        """The batch's loss (mean of ``per_sample [B]``): logged per step in training, kept per sample to evaluate."""
        loss = per_sample.mean()
        if split == "train":
            self.log("train/loss", loss, batch_size=per_sample.shape[0], prog_bar=True)
        else:
            self.eval_loss[split].update(per_sample, index)
        return loss

    def _end_eval(self, split: str) -> dict[str, Tensor]:
        values = self._eval_values(split)
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


class ClassificationTask(PointTask):
    """Shape classification: backbone → max+mean pool → MLP, cross-entropy with label smoothing.

    Metrics (``val/``, ``test/``): ``acc`` (overall accuracy) and ``macc`` (mean class accuracy), both of
    ONE un-augmented view per shape; at test also the per-class accuracy and the confusion matrix, kept in
    ``self.test_results`` for callbacks.

    Voting (test only, ``vote_views > 0``): ``test/acc_vote`` and ``test/macc_vote`` are the accuracies of
    the MEAN of the logits over ``vote_views`` augmented views per shape (see ``vote_transforms``; the
    views are fixed by ``vote_seed`` and the dataset index). One vote per test: never the best of
    repeated votes. ``acc`` stays the single-view number.
    """

    def __init__(
        self,
        backbone: nn.Module,  # a CentroidBackbone, or any module with its contract (benchmarks.baselines)
        num_classes: int,
        class_names: list[str] | None = None,
        head_hidden: list[int] = [512, 256],  # noqa: B006 -- a list for jsonargparse, never mutated
        dropout: float = 0.5,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = _adamw,
        warmup_epochs: int = 0,
        min_lr_ratio: float = 0.01,
        vote_views: int = 0,
        vote_seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, warmup_epochs, min_lr_ratio, compile)
        # Voting is an evaluation option, not part of the trained model: kept out of the checkpoint's
        # hyper-parameters, which LightningCLI would otherwise apply over `test --model.init_args.vote_views K`.
        self.save_hyperparameters(ignore=["vote_views", "vote_seed"])
        if vote_views < 0 or vote_seed < 0:
            raise ValueError(f"vote_views and vote_seed must be >= 0, got {vote_views} and {vote_seed}")
        self.vote_views, self.vote_seed = vote_views, vote_seed
        self.backbone = backbone
        self.head = ClassificationHead(backbone.out_channels, num_classes, hidden=head_hidden, dropout=dropout)
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.names = self.class_names
        self.label_smoothing = label_smoothing
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.eval_metrics = nn.ModuleDict({s: ClassificationMetrics(num_classes) for s in EVAL_SPLITS})
        self.vote_metrics = ClassificationMetrics(num_classes)

    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        """Logits ``[B, num_classes]`` of clouds ``pos [B, N, 3]`` (normals ``x [B, N, 3]``)."""
        return self.logits({"pos": pos} if x is None else {"pos": pos, "normal": x})

    def head_logits(self, out: BackboneOutput, batch: dict[str, Tensor]) -> Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(out)

    def vote_logits(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean of the logits ``[B, num_classes]`` over ``vote_views`` scaled and shifted views of the batch."""
        scale, shift = (t.to(batch["pos"]) for t in vote_transforms(batch["index"], self.vote_views, self.vote_seed))

        def view(s: Tensor, t: Tensor) -> dict[str, Tensor]:  # s, t: (B, 3)
            moved = {**batch, "pos": batch["pos"] * s[:, None] + t[:, None]}
            if "normal" in batch:  # normals transform with the inverse scale
                moved["normal"] = F.normalize(batch["normal"] / s[:, None], dim=-1)
            return moved

        return torch.stack([self.logits(view(s, t)) for s, t in zip(scale, shift)]).mean(0)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")
        if self.vote_views > 0:
            self.vote_metrics.update(self.vote_logits(batch), batch["label"], batch["index"])

    def _eval_values(self, split: str) -> dict[str, Tensor]:
        values = super()._eval_values(split)
        if split == "test" and self.vote_views > 0:
            values.update({f"{k}_vote": v for k, v in self.vote_metrics.compute().items()})
            self.vote_metrics.reset()
        return values

    def _step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        logits = self.logits(batch)
        per_sample = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing, reduction="none")
        loss = self._log_loss(split, per_sample, batch["index"])
        if split == "train":
            self.train_acc(logits, batch["label"])
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=per_sample.shape[0])
        else:
            self.eval_metrics[split].update(logits, batch["label"], batch["index"])
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Class probabilities ``[B, num_classes]`` and predicted class ``[B]`` per cloud."""
        probs = self.logits(batch).softmax(-1)
        return {"index": batch["index"], "probs": probs, "pred": probs.argmax(-1)}


class SegmentationTask(PointTask):
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
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer, warmup_epochs, min_lr_ratio, compile)
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
        self.names = self.category_names
        self.label_smoothing = label_smoothing
        self.eval_metrics = nn.ModuleDict({s: PartSegmentationMetrics(mask) for s in EVAL_SPLITS})

    def head_logits(self, out: BackboneOutput, batch: dict[str, Tensor]) -> Tensor:
        """Per-point part logits ``[B, N, P]`` with other categories' parts set to −inf."""
        category = batch["category"]
        logits = self.head(out, category)
        return logits.masked_fill(~self.part_mask[category].unsqueeze(1), float("-inf"))

    def forward(self, pos: Tensor, category: Tensor, x: Tensor | None = None) -> Tensor:
        """Masked part logits ``[B, N, num_parts]`` of clouds ``pos [B, N, 3]`` of category ``[B]``."""
        batch = {"pos": pos, "category": category}
        return self.logits(batch if x is None else {**batch, "normal": x})

    def _step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        logits = self.logits(batch)
        target = batch["part"]
        per_shape = masked_cross_entropy(logits, target, self.part_mask[batch["category"]], self.label_smoothing)
        loss = self._log_loss(split, per_shape, batch["index"])
        if split != "train":
            self.eval_metrics[split].update(logits.argmax(-1), target, batch["category"], batch["index"])
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per-point part labels ``[B, N]`` (restricted to each shape's category), with the points' file rows
        (``source_index``) when the batch comes from files."""
        logits = self.logits(batch)
        rows = {"source_index": batch["source_index"]} if "source_index" in batch else {}
        return {"index": batch["index"], "pos": batch["pos"], "part": logits.argmax(-1), **rows}
