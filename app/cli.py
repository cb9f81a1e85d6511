"""The command line: ``python -m app fit|validate|test|predict --config configs/<file>.yaml``.

One small ``LightningCLI`` subclass. Values one part derives from another (number of classes,
input channels, the part table) are linked from the data module into the model, never written twice.
A ``--ckpt_path`` file is checked against the model and data the config builds before anything runs,
and every failure is one line naming the file and the problem (full traceback: ``--verbose``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from app.checkpoint import CheckpointError, check_fits, read_checkpoint
from app.errors import run_with_one_line_errors
from app.paths import fresh_path, run_dir

#: ``ckpt_path`` values that Lightning resolves itself (not files).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


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

    def _ckpt_file(self) -> str | None:
        """The ``--ckpt_path`` of this run when it names a file (not ``last``/``best``/...)."""
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        return None if ckpt is None or str(ckpt) in SPECIAL_CKPT_PATHS else str(ckpt)

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyper-parameters into the config here: first make sure the file
        # is one of ours (weights-only) and holds the task class the config asks for.
        ckpt = self._ckpt_file()
        if ckpt is not None:
            saved = read_checkpoint(ckpt)["hyper_parameters"]["_class_path"]
            wanted = self.config[self.config.subcommand].model.class_path
            if saved != wanted:
                raise CheckpointError(
                    ckpt, f"holds a {saved.rsplit('.', 1)[-1]}, the config builds a {wanted.rsplit('.', 1)[-1]}"
                )
        super()._parse_ckpt_path()

    def _run_subcommand(self, subcommand: str) -> None:
        ckpt = self._ckpt_file()
        if ckpt is not None:
            check_fits(ckpt, self.model, self.datamodule)
        super()._run_subcommand(subcommand)


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


def main(args: list[str] | None = None) -> Trainer:
    """Entry point of ``python -m app``: one-line errors, ``--verbose`` for the traceback."""
    return run_with_one_line_errors(lambda argv: make_cli(argv).trainer, args)
