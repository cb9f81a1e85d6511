"""What each part of ``python -m benchmarks`` measures into the raw results (``<output>.json``).

A part is one function ``(cfg, results) -> bool`` in :data:`MEASURE`: it stores its new results in ``results``
(a dict loaded from the JSON file, kept between runs) and returns whether it kept rows an earlier command
measured (the report then lists both commands). A new part is one function here, its name in
``benchmarks.config.PARTS`` and its section in ``benchmarks/report.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from benchmarks import learning, runner
from benchmarks.config import Config
from benchmarks.deploy import run_deploy
from benchmarks.dispatch import count_step
from benchmarks.fit import run_fit
from benchmarks.harness import MODELS


def measure_cost(cfg: Config, results: dict) -> bool:
    """The cells measured now replace theirs; every other model × N is kept."""
    new, old = runner.run_cost(cfg), results.get("cost", {})
    results["cost"] = {table: runner.merge_cells(old.get(table, {}), new[table]) for table in ("models", "variants")}
    return set(cfg.models) != set(MODELS)


def measure_ops(cfg: Config, results: dict) -> bool:
    results["ops"] = runner.run_ops(cfg)
    results["dispatch"] = {**count_step(cfg.dispatch_batch, cfg.dispatch_points), **runner.provenance()}
    return False


def measure_learning(cfg: Config, results: dict) -> bool:
    """The rows file (``cfg.learning_output``) is shared with ``python -m benchmarks.learning``: done (row, seed)
    pairs of the same task are kept, the others run, the file rewritten after each run."""
    path = Path(cfg.learning_output)
    kept = bool(learning.load_rows(path))
    rows = learning.run_matrix(cfg.learning_rows, cfg.learning_seeds, path, Path(cfg.learning_runs), jobs=cfg.jobs)
    results["learning"] = {"rows": rows, "output": str(path)}
    return kept


def measure_fit(cfg: Config, results: dict) -> bool:
    results["fit"] = run_fit(cfg.device, cfg.fit_data_root, cfg.fit_epochs, cfg.fit_limit_batches, cfg.fit_workers,
                             cfg.fit_timeout_s)
    return False


def measure_deploy(cfg: Config, results: dict) -> bool:
    results["deploy"] = run_deploy(cfg.deploy_points, cfg.deploy_batches, cfg.deploy_repeats, cfg.deploy_fit_batches,
                                   cfg.fit_timeout_s)
    return False


MEASURE: dict[str, Callable[[Config, dict], bool]] = {
    "cost": measure_cost, "ops": measure_ops, "learning": measure_learning, "fit": measure_fit,
    "deploy": measure_deploy,
}
