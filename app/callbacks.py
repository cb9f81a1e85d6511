"""Callbacks of the application: exact resume (RNG state), test-metric summary + JSON, prediction files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only


def run_dir(trainer: Trainer) -> Path:
    """The folder of this run: the logger's version folder (W&B: ``save_dir/project/run-id``)."""
    logger = trainer.logger
    if isinstance(logger, WandbLogger):
        path = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / str(logger.version)
    elif logger is not None and getattr(logger, "log_dir", None):
        path = Path(logger.log_dir)
    else:
        path = Path(trainer.default_root_dir)
    return path


def fresh_path(path: Path) -> Path:
    """``path`` if it does not exist yet, else ``stem-1.ext``, ``stem-2.ext``, ...: never overwrite."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _plain(value: Any) -> Any:
    """Tensors → floats/lists with NaN as None, so the JSON is standard."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double()
        return None if value.dim() == 0 and value.isnan() else (value.item() if value.dim() == 0 else [_plain(v) for v in value])
    return value


class RNGState(Callback):
    """Stores the torch, NumPy and Python RNG states in checkpoints and restores them on resume.

    With this, ``fit --ckpt_path last`` continues with the same shuffling and augmentation as an
    uninterrupted run. States are kept as tensors and lists, so checkpoints stay ``weights_only``-safe.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                      "has_gauss": has_gauss, "gauss": gauss},
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        random.setstate((state_dict["python_version"], tuple(state_dict["python"]), None))


class TestMetricsWriter(Callback):
    """After ``test``: one summary line on the console and every test metric in ``test_metrics.json``."""

    def __init__(self, filename: str = "test_metrics.json") -> None:
        self.filename = filename
        self.path: Path | None = None

    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scalars = {k: _plain(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        results = {k: _plain(v) for k, v in getattr(pl_module, "test_results", {}).items()}
        names = getattr(pl_module, "class_names", None) or getattr(pl_module, "category_names", None)
        payload = {"metrics": scalars, "details": results, "names": names, "num_samples": self._num_samples(trainer)}
        directory = run_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = fresh_path(directory / self.filename)
        self.path.write_text(json.dumps(payload, indent=2))
        summary = "  ".join(f"{k}={v:.4f}" for k, v in scalars.items() if isinstance(v, float))
        rank_zero_info(f"TEST  {summary}  ({payload['num_samples']} samples) → {self.path}")

    @staticmethod
    def _num_samples(trainer: Trainer) -> int | None:
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, Sequence) else loaders
        return len(loader.dataset) if loader is not None and hasattr(loader.dataset, "__len__") else None


class PredictionWriter(BasePredictionWriter):
    """Writes the results of ``predict`` into the run folder and prints the path.

    Classification: ``predictions.json`` with, per input, the predicted class and every class probability.
    Segmentation: ``predictions.json`` with the per-point part ids, plus one ``<name>_parts.ply`` per
    input with points coloured by predicted part. Under DDP each rank writes its own ``-rank<r>`` file.
    """

    def __init__(self, filename: str = "predictions.json") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.path: Path | None = None

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        from app.render import centroid_colors, write_ply  # Open3D only when predicting

        loader = trainer.predict_dataloaders
        dataset = (loader[0] if isinstance(loader, Sequence) else loader).dataset
        names = getattr(dataset, "names", None)
        directory = run_dir(trainer)
        rank = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        out = fresh_path(directory / f"{Path(self.filename).stem}{rank}{Path(self.filename).suffix}")
        class_names = getattr(pl_module, "class_names", None)
        rows = []
        for batch in predictions:
            for i, index in enumerate(batch["index"].tolist()):
                name = names[index] if names else f"sample {index}"
                if "probs" in batch:
                    probs = batch["probs"][i].tolist()
                    pred = int(batch["pred"][i])
                    rows.append({"input": name, "class": class_names[pred], "class_index": pred,
                                 "probabilities": dict(zip(class_names, probs))})
                else:
                    part = batch["part"][i].cpu().numpy()
                    ply = fresh_path(directory / f"{Path(name).stem.replace(' ', '_')}_parts.ply")
                    write_ply(ply, batch["pos"][i].cpu().numpy(), centroid_colors(int(part.max()) + 1)[part])
                    rows.append({"input": name, "parts": part.tolist(), "ply": str(ply)})
        directory.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
        self.path = out
        print(f"predictions of {len(rows)} input(s) written to {out}")
