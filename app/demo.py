"""``python -m app.demo`` (README command 1, ``make demo``): the whole job on the embedded default.

Generates the default data set (first run only), trains ``configs/demo.yaml``, tests the last checkpoint
(the final epoch; the best one would be chosen on the test split, docs/reporting.md), and renders the
learned centroids of a test shape. Ends by printing where the test metrics (JSON) and the centroid
pictures (PNG grid + ``.ply``) are. Extra arguments go to the CLI, e.g. ``python -m app.demo
--trainer.max_epochs 3``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from app.analysis import analyse, render_analysis, sample_from_split
from app.callbacks import TestMetricsWriter
from app.cli import make_cli
from app.errors import run_with_one_line_errors
from app.paths import run_dir

DEFAULT_CONFIG = "configs/demo.yaml"
#: The class whose first test shape is drawn (the generated data set has one; else the first shape).
PICTURE_CLASS = "table"


def _picture_index(datamodule: object) -> int:
    dataset = datamodule.datasets["test"]
    labels = dataset.arrays.get("label")
    if labels is None or PICTURE_CLASS not in datamodule.class_names:
        return 0
    wanted = datamodule.class_names.index(PICTURE_CLASS)
    hits = [i for i, row in enumerate(dataset.indices) if labels[row] == wanted]
    return hits[0] if hits else 0


@rank_zero_only
def _render(task: object, datamodule: object, out_dir: Path) -> Path | None:
    index = _picture_index(datamodule)
    analysis = analyse(task.eval(), sample_from_split(datamodule, "test", index), f"test shape {index}")
    paths = render_analysis(analysis, out_dir)
    return (paths["grid"] or paths["ply"])[0]


def run(argv: list[str]) -> None:
    """Train, test and draw; prints a summary with the paths of the results."""
    parser = argparse.ArgumentParser(prog="python -m app.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    args, cli_args = parser.parse_known_args(argv)

    start = time.perf_counter()
    cli = make_cli(["--config", args.config, *cli_args], run=False)
    trainer, task, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(task, data)
    trainer.test(task, data, ckpt_path="last")  # the final epoch: "best" would be picked on the test split
    metrics_file = next(cb.path for cb in trainer.callbacks if isinstance(cb, TestMetricsWriter))
    picture = _render(task, data, run_dir(trainer) / "centroids")
    minutes = (time.perf_counter() - start) / 60
    scalars = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if trainer.is_global_zero:
        print(f"\ndemo finished in {minutes:.1f} min")
        print("  test metrics: " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(scalars.items())))
        print(f"  metrics JSON: {metrics_file}")
        print(f"  centroids:    {picture}")
        print(f"  checkpoints:  {trainer.checkpoint_callback.dirpath}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, ``--verbose`` for the traceback."""
    run_with_one_line_errors(run, argv)


if __name__ == "__main__":
    main()
