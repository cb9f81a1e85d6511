"""Short training of one benchmark model on the generated classification data, in its own subprocess.

``python -m benchmarks.training '<json TrainSpec>'`` prints ``RESULT {json}``. Every model sees the same
data, order, epochs and optimiser (Adam, constant learning rate), so the test accuracies compare the
models at equal (small) training budget; they are far from converged numbers.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from benchmarks.harness import build_classifier


@dataclass
class TrainSpec:
    """One short training run."""

    name: str
    data_root: str
    num_points: int = 512
    epochs: int = 4
    batch_size: int = 16
    lr: float = 1e-3
    train_per_class: int = 40
    test_per_class: int = 10
    threads: int = 0
    seed: int = 0


@dataclass
class TrainResult:
    spec: TrainSpec
    test_acc: float | None = None
    train_s: float | None = None
    error: str | None = None


def train_and_test(spec: TrainSpec) -> TrainResult:
    """Train ``spec.name`` for ``spec.epochs`` epochs and return its overall test accuracy."""
    from datamodules.generated.write import GeneratorConfig
    from datamodules.modelnet import ModelNetDataModule

    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    gen = GeneratorConfig(train_per_class=spec.train_per_class, val_per_class=1, test_per_class=spec.test_per_class,
                          points=max(1024, spec.num_points), seed=spec.seed)  # fmt: skip
    dm = ModelNetDataModule(root=spec.data_root, format="generated", num_points=spec.num_points,
                            use_normals=False, batch_size=spec.batch_size, augment=None, seed=spec.seed, generator=gen)  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    model = build_classifier(spec.name, spec.num_points, dm.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    start = time.perf_counter()
    model.train()
    for _ in range(spec.epochs):
        for batch in dm.train_dataloader():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(batch["pos"]), batch["label"]).backward()
            opt.step()
    train_s = time.perf_counter() - start
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            correct += int((model(batch["pos"]).argmax(-1) == batch["label"]).sum())
            total += len(batch["label"])
    return TrainResult(spec, correct / max(total, 1), train_s)


def _main(arg: str) -> None:
    spec = TrainSpec(**json.loads(arg))
    try:
        result = train_and_test(spec)
    except Exception as e:  # noqa: BLE001 -- any failure becomes a row note, never a crash of the benchmark
        result = TrainResult(spec, error=f"{type(e).__name__}: {str(e).strip()[:160]}")
    print("RESULT " + json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1])
