"""Helper of test_ddp.py (run as a script): 2 CPU processes under Lightning DDP record the sample indices they see."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from datamodules import ModelNetDataModule


class Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[int] = []

    def training_step(self, batch: dict, _: int) -> torch.Tensor:
        self.seen += batch["index"].tolist()
        return (self.w * batch["pos"].mean()).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main(out: Path, root: str, data_seeds: list[int | None]) -> None:
    """One fit per data seed in the same 2 processes (the children are launched once); ``rank{r}_{seed}.json``."""
    for data_seed in data_seeds:
        dm = ModelNetDataModule(root, num_points=64, batch_size=4, augment=None, cache_dir=str(out / "cache"),
                                data_seed=data_seed)
        model = Recorder()
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
        trainer.fit(model, dm)
        sampler = type(trainer.train_dataloader.sampler).__name__
        record = {"seen": model.seen, "n": len(dm.datasets["train"]), "sampler": sampler}
        (out / f"rank{trainer.global_rank}_{data_seed}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], [None if s == "none" else int(s) for s in sys.argv[3:]])
