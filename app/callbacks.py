"""Callbacks of the application: checkpoints at a path the config names, exact resume (RNG state),
test-metric summary + JSON, prediction files, W&B panels."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from app import render
from app.analysis import analyse, render_analysis
from app.paths import fresh_path, run_dir
from app.tasks import PointTask
from datamodules.files import PointFilesDataset
from models.ops import knn


def _plain(value: Any) -> Any:
    """Tensors → floats / nested lists with NaN as ``None``, so the JSON is standard."""
    if not isinstance(value, torch.Tensor):
        return value
    value = value.detach().cpu().double()
    if value.dim() > 0:
        return [_plain(v) for v in value]
    return None if value.isnan() else value.item()


class Checkpoints(ModelCheckpoint):
    """``ModelCheckpoint`` whose folder defaults to ``<trainer.default_root_dir>/checkpoints``.

    Lightning's default is the logger's version folder (a W&B run id), which no command line can know in
    advance; with this, an experiment that sets ``trainer.default_root_dir: runs/demo`` keeps its
    checkpoints at ``runs/demo/checkpoints/{best-*,last}.ckpt``, and the callback's settings are written
    once for all experiments (``configs/trainer/callbacks_*.yaml``).
    """

    def _resolve_dirpath(self, trainer: Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._resolve_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        # Lightning resolves `ckpt_path="last"` before `setup`; unresolved, it would search the logger's folder,
        # find nothing and silently start the run again from epoch 0.
        self._resolve_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)


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
    def on_test_end(self, trainer: Trainer, pl_module: PointTask) -> None:
        scalars = {k: _plain(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        results = {k: _plain(v) for k, v in pl_module.test_results.items()}
        payload = {"metrics": scalars, "details": results, "names": pl_module.names,
                   "num_samples": self._num_samples(trainer), "checkpoint": pl_module.test_checkpoint}
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
        return len(loader.dataset) if loader is not None and isinstance(loader.dataset, Sized) else None


def nearest_parts(points: np.ndarray, sampled: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """The part of each of ``points`` = the part of its nearest ``sampled`` point (``models.ops.knn``, k = 1).

    Shapes:
        points: ``[P, 3]``; sampled: ``[N, 3]``; parts: ``[N]``. Returns ``[P]`` int64.
    """
    query = torch.from_numpy(np.asarray(points, np.float64))[None]
    nearest = knn(query, torch.from_numpy(np.asarray(sampled, np.float64))[None], 1)[0, :, 0]  # (P,)
    return np.asarray(parts, np.int64)[nearest.numpy()]


class PredictionWriter(BasePredictionWriter):
    """Writes the results of ``predict`` into the run folder and prints the path.

    Classification: ``predictions.json`` with, per input, the predicted class and every class probability.
    Segmentation of files: ``predictions.json`` with, per input, ``parts``: the part of every point of the
    file in the file's row order (``parts[r]`` is row ``r``; a mesh: the points sampled from its surface), each
    taken from the nearest of the N points the model saw, ``sampled_rows``: the rows of those points, and one
    ``<name>_parts.ply`` of all the file's points coloured by part. (Segmentation of the test split: the N
    points' parts.) Under DDP each rank writes its own ``-rank<r>`` file.
    """

    def __init__(self, filename: str = "predictions.json") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.path: Path | None = None

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: PointTask, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        loader = trainer.predict_dataloaders
        dataset = (loader[0] if isinstance(loader, Sequence) else loader).dataset
        names = dataset.names if isinstance(dataset, PointFilesDataset) else None  # else: the test split
        directory = run_dir(trainer)
        rank = f"-rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        out = fresh_path(directory / f"{Path(self.filename).stem}{rank}{Path(self.filename).suffix}")
        class_names = pl_module.names
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
                    part, pos, extra = batch["part"][i].cpu().numpy(), batch["pos"][i].cpu().numpy(), {}
                    if "source_index" in batch:  # a file: every one of its points, in its row order
                        sampled = batch["source_index"][i].cpu().numpy()
                        pos = dataset.points(index)
                        part = nearest_parts(pos, pos[sampled], part)
                        extra = {"sampled_rows": np.unique(sampled).tolist()}
                    stem = re.sub(r"[^\w.-]+", "_", Path(name).name).strip("_")  # "x.h5[3]" → "x.h5_3"
                    ply = fresh_path(directory / f"{stem}_parts.ply")
                    colors = render.centroid_colors(int(part.max()) + 1)[part]
                    render.write_ply(ply, pos, colors)
                    rows.append({"input": name, "parts": part.tolist(), **extra, "ply": str(ply)})
        directory.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
        self.path = out
        print(f"predictions of {len(rows)} input(s) written to {out}")


class WandbPanels(Callback):
    """What W&B shows beyond scalars (rank 0 only, and only with a ``WandbLogger``).

    Every ``every_n_epochs`` validation epochs and at the last one: ``wandb.Object3D`` point clouds of
    ``num_shapes`` fixed validation shapes, one per stage, coloured by centroid assignment with the
    centroids in full colour, plus the rendered PNG grid as ``wandb.Image`` (the same pictures as
    ``python -m app.visualize``). After ``test``: a per-class (or per-category) table and the confusion matrix.
    """

    def __init__(self, every_n_epochs: int = 5, num_shapes: int = 1, max_points: int = 2048, png: bool = True) -> None:
        self.every_n_epochs, self.num_shapes, self.max_points, self.png = every_n_epochs, num_shapes, max_points, png

    def _due(self, trainer: Trainer) -> bool:
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == trainer.max_epochs

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not isinstance(trainer.logger, WandbLogger):
            return
        if self._due(trainer):
            self._log_centroids(trainer, pl_module)

    def _log_centroids(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import tempfile

        import wandb
        from PIL import Image


        loaders = trainer.val_dataloaders
        dataset = (loaders[0] if isinstance(loaders, Sequence) else loaders).dataset
        panels: dict[str, Any] = {}
        for index in range(min(self.num_shapes, len(dataset))):
            sample = {k: v.to(pl_module.device) for k, v in dataset[index].items()}
            a = analyse(pl_module, sample, f"val shape {index} · epoch {trainer.current_epoch}")
            point_colors, cent_colors = render.stage_point_colors(a.stages)
            for s, stage in enumerate(a.stages, start=1):
                cloud = render.wandb_object3d_payload(
                    a.points, point_colors[s - 1], stage.centroids, cent_colors[s - 1], max_points=self.max_points
                )
                panels[f"val/centroids/shape{index}/stage{s}"] = wandb.Object3D(cloud)
            if self.png:
                with tempfile.TemporaryDirectory() as tmp:
                    grid = render_analysis(a, tmp)["grid"]
                    if grid:  # read now: W&B copies the file only when the panel is logged
                        image = np.asarray(Image.open(grid[0]).convert("RGB"))
                        panels[f"val/centroids/shape{index}/grid"] = wandb.Image(image, caption=a.title)
        trainer.logger.experiment.log({**panels, "trainer/global_step": trainer.global_step})

    @rank_zero_only
    def on_test_end(self, trainer: Trainer, pl_module: PointTask) -> None:
        if not isinstance(trainer.logger, WandbLogger):
            return
        import wandb

        results, names = pl_module.test_results, pl_module.names
        per_name = results.get("acc_per_class", results.get("miou_per_category"))
        log: dict[str, Any] = {}
        if per_name is not None:
            column = "accuracy" if "acc_per_class" in results else "mIoU"
            log["test/per_class"] = wandb.Table(columns=["name", column],
                                                 data=[[n, _plain(v)] for n, v in zip(names, per_name)])
        if "confusion" in results:
            rows = [[t, p, int(c)] for t, row in zip(names, results["confusion"].tolist()) for p, c in zip(names, row)]
            log["test/confusion_matrix"] = wandb.Table(columns=["true", "predicted", "count"], data=rows)
        if log:
            trainer.logger.experiment.log(log)
