"""Equal-budget training of one benchmark model on the generated classification data (xyz only).

``python -m benchmarks.training '<json TrainSpec>'`` prints ``RESULT {json}``. Every model and variant gets
the same data, order, augmentation, epochs and one sound recipe: AdamW (weight decay 0.05), a linear
warm-up over the first epoch then cosine decay per step, label smoothing 0.1, the project's classification
head with dropout 0.5. The seed fixes initialisation, data order and augmentation. Test accuracy is that
of the last epoch (no best-epoch picking).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from benchmarks.baselines import Classifier
from benchmarks.harness import RATIOS, build_classifier
from datamodules.modelnet import ModelNetDataModule
from datamodules.synthetic.write import GeneratorConfig


@dataclass
class TrainSpec:
    """One training run: a model (``name`` in ``MODELS``) with ``options``, on ``num_points`` points."""

    name: str
    data_root: str
    num_points: int = 256
    epochs: int = 12
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    dropout: float = 0.5
    train_per_class: int = 40
    test_per_class: int = 50  # 600 test shapes: one shape is 0.17 points (docs/operator.md §6)
    threads: int = 0
    seed: int = 0
    ratios: list[int] = field(default_factory=lambda: list(RATIOS))
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # half the default: 4× cheaper to train
    steps: int = 2
    options: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    spec: TrainSpec
    test_acc: float | None = None
    train_s: float | None = None
    curve: list[float] = field(default_factory=list)  # mean training loss per epoch
    error: str | None = None


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def prepare_training_data(spec: TrainSpec) -> ModelNetDataModule:
    """The generated data set of ``spec`` (the same for every seed and model), generated and cached once."""
    gen = GeneratorConfig(train_per_class=spec.train_per_class, val_per_class=1, test_per_class=spec.test_per_class,
                          points=max(1024, spec.num_points), seed=0)
    dm = ModelNetDataModule(root=spec.data_root, format="generated", num_points=spec.num_points,
                            use_normals=False, batch_size=spec.batch_size, seed=0, generator=gen)
    dm.prepare_data()
    return dm


def setup_run(spec: TrainSpec) -> tuple[ModelNetDataModule, Classifier, torch.optim.Optimizer, LambdaLR]:
    """Data, model, AdamW and the warm-up + cosine schedule of one run (threads and seed set first)."""
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    dm = prepare_training_data(spec)
    dm.setup("fit")
    dm.setup("test")
    model = build_classifier(spec.name, spec.num_points, dm.num_classes, dropout=spec.dropout, ratios=spec.ratios,
                             steps=spec.steps, options=spec.options, widths=spec.widths)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    per_epoch = len(dm.train_dataloader())
    sched = LambdaLR(opt, lambda s: warmup_cosine(s, per_epoch, per_epoch * spec.epochs))
    return dm, model, opt, sched


def evaluate_accuracy(model: Classifier, dm: ModelNetDataModule) -> float:
    """Overall accuracy on the test split, in eval mode."""
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            correct += int((model(batch["pos"]).argmax(-1) == batch["label"]).sum())
            total += len(batch["label"])
    return correct / max(total, 1)


def train_and_test(spec: TrainSpec) -> TrainResult:
    """Train ``spec.name`` for ``spec.epochs`` epochs and return its overall test accuracy."""
    dm, model, opt, sched = setup_run(spec)
    curve = []
    start = time.perf_counter()
    model.train()
    for _ in range(spec.epochs):
        losses = []
        for batch in dm.train_dataloader():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(batch["pos"]), batch["label"], label_smoothing=spec.label_smoothing)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        curve.append(sum(losses) / len(losses))
    train_s = time.perf_counter() - start
    return TrainResult(spec, evaluate_accuracy(model, dm), train_s, curve)


def _main(arg: str) -> None:
    spec = TrainSpec(**json.loads(arg))
    try:
        result = train_and_test(spec)
    except Exception as e:  # noqa: BLE001 -- any failure becomes a row note, never a crash of the benchmark
        result = TrainResult(spec, error=f"{type(e).__name__}: {str(e).strip()[:160]}")
    print("RESULT " + json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1])
