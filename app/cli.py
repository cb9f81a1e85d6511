"""The command line: ``python -m app fit|validate|test|predict --config configs/<file>.yaml``.

One small ``LightningCLI`` subclass. Values one part derives from another (number of classes,
input channels, the part table) are linked from the data module into the model, never written twice.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from app.callbacks import fresh_path, run_dir


def _mask_to_lists(mask: torch.Tensor) -> list[list[int]]:
    """The data module's bool part mask as plain lists (plain hyper-parameters in the checkpoint)."""
    return torch.as_tensor(mask).int().tolist()


class RunConfigSaver(SaveConfigCallback):
    """Snapshots the fully resolved config into the run's own folder and into the logger (W&B config).

    Lightning's default writes ``config.yaml`` into ``trainer.log_dir``, which W&B runs share; here every
    run keeps its own copy and an existing file is never overwritten.
    """

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        directory = run_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        fresh_path(directory / self.config_filename).write_text(text)
        if trainer.logger is not None:
            trainer.logger.log_hyperparams({"config": yaml.safe_load(text)})


class CentroidCLI(LightningCLI):
    """LightningCLI with the data → model links of this project."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Links whose target a task does not have are skipped by jsonargparse.
        links = {
            "data.num_classes": "model.init_args.num_classes",
            "data.class_names": "model.init_args.class_names",
            "data.in_channels": "model.init_args.backbone.init_args.in_channels",
            "data.num_parts": "model.init_args.num_parts",
            "data.num_categories": "model.init_args.num_categories",
            "data.category_names": "model.init_args.category_names",
        }
        for source, target in links.items():
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.link_arguments(
            "data.part_mask", "model.init_args.part_mask", compute_fn=_mask_to_lists, apply_on="instantiate"
        )


def make_cli(args: list[str] | None = None, run: bool = True, **kwargs: Any) -> CentroidCLI:
    """Build (and by default run) the CLI; ``args`` as on the command line, ``None`` = ``sys.argv``."""
    with warnings.catch_warnings():
        if args is not None:  # a tool or test passing its own args: its sys.argv is not for the CLI
            warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
        return CentroidCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"save_to_log_dir": False},
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,
        )


def build_from_config(config: str, overrides: list[str] | None = None) -> tuple[LightningModule, LightningDataModule]:
    """The (untrained) task and data module a YAML config describes, for tools and notebooks.

    ``overrides`` are extra command-line style arguments, e.g. ``["--data.init_args.batch_size", "4"]``.
    """
    cli = make_cli(["--config", config, "--trainer.logger", "false", *(overrides or [])], run=False)
    return cli.model, cli.datamodule


def load_task(ckpt_path: str, map_location: str | torch.device = "cpu") -> LightningModule:
    """Rebuild a trained task from its checkpoint alone (``weights_only=True``: no pickled code runs)."""
    import app.tasks  # noqa: F401  (the classes a checkpoint may name must be imported)

    ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    class_path = ckpt.get("hyper_parameters", {}).get("_class_path")
    if class_path is None:
        raise ValueError(f"{ckpt_path}: not a checkpoint written by this application (no '_class_path' hyper-parameter)")
    module_name, cls_name = class_path.rsplit(".", 1)
    cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
    return cls.load_from_checkpoint(ckpt_path, map_location=map_location, weights_only=True)


def main(args: list[str] | None = None) -> Trainer:
    """Entry point of ``python -m app``."""
    return make_cli(args).trainer
