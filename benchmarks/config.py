"""Sizes and limits of one ``python -m benchmarks`` run."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from benchmarks.experiments import COMPILED, LEARNING_ROWS, VARIANTS
from benchmarks.harness import MODELS

#: Every part a run can redo, in report order (see ``benchmarks/__main__.py``).
PARTS = ("cost", "ops", "learning", "fit", "deploy")
#: The parts a plain run redoes (``learning`` takes hours, ``fit`` an epoch at paper scale, ``deploy`` two exports:
#: asked for by name).
DEFAULT_PARTS = ("cost", "ops")


@dataclass
class Config:
    """Sizes and limits of one benchmark run (``--quick`` shrinks all of them)."""

    sizes: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    local_sizes: list[int] = field(default_factory=lambda: [16384, 32768, 65536, 131072])  # local mode + ops only
    variant_sizes: list[int] = field(default_factory=lambda: [1024, 4096])
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))  # the cost variants (re)measured
    models: list[str] = field(default_factory=lambda: list(MODELS))
    batch: int = 4
    repeats: int = 10  # timed runs at most (fewer when they would not fit the cell budget)
    min_repeats: int = 5  # timed runs at least: every number a ratio or a verdict uses has a spread
    cell_budget_s: float = 20.0  # timed repeats fit into about this
    cell_timeout_s: float = 240.0  # hard limit of one cell's subprocess
    mem_gib: float = 12.0  # address-space cap of one cell's subprocess
    threads: int = 0
    device: str = "cpu"
    compile: bool = False
    jobs: int = 1  # learning runs side by side
    torch_cluster_python: str | None = None
    isolate: bool = True  # one subprocess per cell (honest peak memory); False runs cells in this process
    fit_epochs: int = 1
    fit_limit_batches: int | None = None  # training (and validation) batches per epoch; None: all
    fit_workers: int | None = None  # loader workers; None: the config's
    fit_data_root: str = "data/benchmark_modelnet40_size"
    fit_timeout_s: float = 7200.0
    dispatch_points: int = 1024  # the aten-op count of one training step (ops part): N and batch
    dispatch_batch: int = 8
    learning_rows: list[str] = field(default_factory=lambda: list(LEARNING_ROWS))
    learning_seeds: int = 5
    learning_output: str = "benchmarks/results/learning.json"  # the rows, shared with python -m benchmarks.learning
    learning_runs: str = "runs/learning"
    deploy_points: int = 1024
    deploy_batches: list[int] = field(default_factory=lambda: [1, 16])
    deploy_repeats: int = 10  # timed calls of the file and of eager torch per batch size
    deploy_fit_batches: int = 4  # training batches of the demo fit that makes the checkpoint


def quick_config() -> Config:
    """Tiny sizes for tests: runs end to end in well under a minute."""
    return Config(sizes=[128], local_sizes=[256], variant_sizes=[128], batch=2, repeats=1, min_repeats=1,
                  cell_budget_s=1.0, cell_timeout_s=60.0, isolate=False, dispatch_points=512, dispatch_batch=1)


def forget_removed_parts(root: dict) -> dict:
    """Drop, in place, what older raw results hold of parts that no longer exist (``train``, the equal-budget training
    that the ``learning`` part replaced): their rows, commands, configs and machines, and the removed fields of the
    recorded configs; the cells of cost variants no longer in ``VARIANTS``; in the CPU results and the GPU ones
    (``root["gpu"]``). Returns ``root``."""
    known = {f.name for f in fields(Config)}
    for results in (root, root.get("gpu", {})):
        results.pop("train", None)
        variants = results.get("cost", {}).get("variants", {})
        for name in [n for n in variants if n.rpartition("@")[2] not in (*VARIANTS, COMPILED)]:
            del variants[name]  # a cost variant since changed or removed (its label names its settings)
        if "parts" in results:
            results["parts"] = [part for part in results["parts"] if part in PARTS]
        for key in ("commands", "configs", "machines"):
            if key in results:
                results[key] = {part: v for part, v in results[key].items() if part in PARTS}
        if "configs" in results:
            results["configs"] = {part: {k: v for k, v in c.items() if k in known}
                                  for part, c in results["configs"].items()}
    return root
