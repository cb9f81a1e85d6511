"""Checkpoints of this application: read safely, refuse foreign or pickled ones by name, rebuild task and data.

Every load is ``weights_only=True``: a checkpoint that needs pickled Python objects is refused, never
"retried unsafely". A task checkpoint names its class (``_class_path``, written by the CLI); only classes
of this application (``app.tasks.*``, ``datamodules.*``) are ever imported from it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from datamodules.base import PointCloudDataModule
from models.backbone import CentroidBackbone, StageSettings

TASK_PREFIX = "app.tasks."
DATA_PREFIX = "datamodules."
CENTROID_BACKBONE = f"{CentroidBackbone.__module__}.{CentroidBackbone.__name__}"
#: Hyper-parameters that must agree between a checkpoint and the model a config builds around it.
MATCHED_HPARAMS = ("num_classes", "num_parts", "num_categories", "class_names", "category_names")
#: Data settings that decide what the model sees (the pictures and predictions must use the trained ones).
DATA_SETTINGS = ("num_points", "use_normals", "sampling")


class CheckpointError(ValueError):
    """A checkpoint that is missing, refused, not one of ours, or does not fit the model or data at hand."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` and checked to be a task of this application."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file not found")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(path, "not a readable PyTorch checkpoint (not the zip archive torch.save writes)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            path,
            "refused: it holds pickled Python objects beyond tensors and plain data, and unpickling them could run "
            "code. This application writes checkpoints that load without that; use one written by it.",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({first})") from None
    class_path = ckpt.get("hyper_parameters", {}).get("_class_path") if isinstance(ckpt, dict) else None
    if not isinstance(class_path, str) or not class_path.startswith(TASK_PREFIX) or "state_dict" not in ckpt:
        raise CheckpointError(
            path, "not a checkpoint of this application (no app.tasks class among its hyper-parameters)"
        )
    _check_stage_settings(path, ckpt["hyper_parameters"].get("backbone"))
    return ckpt


def _check_stage_settings(path: Path, backbone: Any) -> None:
    """Refuse, in one line, a checkpoint whose centroid backbone takes the per-stage settings flat (before
    ``stage:``); other backbones (the baselines) have flat arguments of their own."""
    if not isinstance(backbone, Mapping) or backbone.get("class_path") != CENTROID_BACKBONE:
        return
    args = _init_args(backbone)
    flat = sorted(set(args) & {f.name for f in dataclasses.fields(StageSettings)})
    if flat and "stage" not in args:
        raise CheckpointError(
            path,
            f"written by an older version: its backbone takes the per-stage settings ({', '.join(flat[:3])}, ...) "
            "flat, where this version nests them under `stage:` (configs/model/backbone_*.yaml); retrain it",
        )


def _class(path: Path, class_path: str, prefix: str) -> type:
    if not class_path.startswith(prefix):
        raise CheckpointError(path, f"names class {class_path!r}, which is not one of this application's ({prefix}*)")
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise CheckpointError(path, f"names class {class_path!r}, which does not exist in this version") from None


def load_task(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> LightningModule:
    """Rebuild a trained task from its checkpoint alone (``weights_only=True``: no pickled code runs)."""
    path = Path(ckpt_path)
    cls = _class(path, read_checkpoint(path)["hyper_parameters"]["_class_path"], TASK_PREFIX)
    return cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)


def load_datamodule(ckpt_path: str | Path, **overrides: object) -> PointCloudDataModule:
    """The data module the checkpoint was trained with, rebuilt from the data settings stored in it (``overrides``
    replace some of them, e.g. ``num_points``)."""
    path = Path(ckpt_path)
    hparams = read_checkpoint(path).get("datamodule_hyper_parameters")
    if not hparams or "_class_path" not in hparams:
        raise CheckpointError(path, "holds no data settings (written outside `python -m app fit`?)")
    cls = _class(path, hparams["_class_path"], DATA_PREFIX)
    return cls.load_from_checkpoint(path, weights_only=True, **overrides)


def check_fits(ckpt_path: str | Path, task: LightningModule, datamodule: PointCloudDataModule | None = None) -> None:
    """Raise a one-line :class:`CheckpointError` when the checkpoint does not fit the task/data a config built.

    Compares the task class, class/part/category counts and names, the backbone's settings and, with a
    data module, the data settings that change what the model sees (:data:`DATA_SETTINGS`).
    """
    path = Path(ckpt_path)
    ckpt = read_checkpoint(path)
    saved = ckpt["hyper_parameters"]
    ours = f"{type(task).__module__}.{type(task).__qualname__}"
    if saved["_class_path"] != ours:
        raise CheckpointError(
            path, f"holds a {saved['_class_path'].rsplit('.', 1)[-1]}, the config builds a {type(task).__name__}"
        )
    for key in MATCHED_HPARAMS:
        if key in saved and key in task.hparams and saved[key] != task.hparams[key]:
            raise CheckpointError(
                path, f"trained with {key}={_short(saved[key])}, the data at hand has {_short(task.hparams[key])}"
            )
    backbone_diff = _differences(_init_args(saved.get("backbone")), _init_args(task.hparams.get("backbone")))
    if backbone_diff:
        raise CheckpointError(path, f"its backbone differs from the config's: {backbone_diff}")
    weights = _weight_mismatch(ckpt["state_dict"], task.state_dict())
    if weights:
        raise CheckpointError(path, f"does not fit the config's model: {weights}")
    if datamodule is not None:
        check_data_settings(path, ckpt.get("datamodule_hyper_parameters") or {}, datamodule)


def check_data_settings(path: str | Path, saved: dict[str, Any], datamodule: PointCloudDataModule) -> None:
    """Raise when ``datamodule`` disagrees with the checkpoint's data settings (:data:`DATA_SETTINGS`, attributes
    every ``PointCloudDataModule`` declares)."""
    diff = _differences({k: saved[k] for k in DATA_SETTINGS if k in saved},
                        {k: getattr(datamodule, k) for k in DATA_SETTINGS if k in saved})
    if diff:
        raise CheckpointError(path, f"trained on other data settings than the config's: {diff}")


def _init_args(value: Any) -> dict[str, Any]:
    """The ``init_args`` of a ``class_path`` config as a dict; ``{}`` for a module (compared by its weights)."""
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if not isinstance(value, Mapping):
        return {}
    return dict(value.get("init_args", value))


def _weight_mismatch(saved: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor]) -> str:
    """The first parameter whose presence or shape differs between the checkpoint and the model, or ``""``."""
    for key in sorted(set(saved) | set(model)):
        if key not in model or key not in saved:
            return f"parameter {key} is only in the {'checkpoint' if key in saved else 'config'}'s model"
        if tuple(saved[key].shape) != tuple(model[key].shape):
            return f"parameter {key}: checkpoint {list(saved[key].shape)}, config {list(model[key].shape)}"
    return ""


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """``key: checkpoint X, config Y`` for every key whose values differ (keys missing on one side skipped)."""
    keys = [k for k in saved if k in current and _plain(saved[k]) != _plain(current[k])]
    return "; ".join(f"{k}: checkpoint {_short(saved[k])}, config {_short(current[k])}" for k in keys)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
