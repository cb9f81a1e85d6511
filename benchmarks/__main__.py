"""``python -m benchmarks``: cost and learning of centroid attention against its baselines → BENCHMARKS.md.

Parts, each stored as raw results in ``<output>.json`` so that a later run can redo one part and keep
the others (``--parts``):

- ``cost``: every model × N (and the centroid variants: schedule, T) — fwd+bwd time, inference throughput,
  peak memory, FLOPs (see ``benchmarks/harness.py``). On CPU every cell runs in its own subprocess under an
  address-space cap and a wall-time limit (honest peak RSS, failures isolated); on CUDA cells run in this
  process (``max_memory_allocated`` is exact there, and a process per cell would spend seconds starting CUDA).
- ``ops``: neighbour search and sampling on their own (in-model kNN/FPS, the data side's FPS order).
- ``learning`` (only when asked for; hours on a CPU): the users' recipe (``python -m app fit`` / ``test``) per row and
  paired seed on the hard generated task (``benchmarks/learning.py``, docs/hard_task.md); ``--jobs`` runs side by
  side; its rows shared with ``python -m benchmarks.learning``.
- ``fit`` (only when asked for): a real ``python -m app fit`` of configs/modelnet40.yaml on generated data of
  ModelNet40's size, timed end to end (``benchmarks/fit.py``).
- ``deploy`` (only when asked for): the demo model exported to ONNX and as an exported program, checked and timed
  against eager torch at N = 1024, batch 1 and 16 (``python -m app export --time``, ``benchmarks/deploy.py``).

The command is split by job: ``config`` (sizes), ``experiments`` (variants, learning rows), ``runner`` (cells),
``parts`` (what each part measures), ``verdicts`` (targets), ``report`` (markdown), ``plots`` (PNGs beside the
output). Full CPU run (the one in BENCHMARKS.md): see the command in its header. A tiny end-to-end run:
``python -m benchmarks --quick --output /tmp/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.config import DEFAULT_PARTS, PARTS, Config, forget_removed_parts, quick_config
from benchmarks.experiments import VARIANTS
from benchmarks.harness import MODELS
from benchmarks.parts import MEASURE
from benchmarks.plots import plot
from benchmarks.report import render
from benchmarks.runner import REPO, machine


def run(cfg: Config, output: Path, command: str, parts: tuple[str, ...] = PARTS) -> str:
    """Run ``parts``, keep the other parts' raw results from ``<output>.json``, write the report and its plots
    (PNGs beside ``output``); returns the report.

    A CUDA run keeps its results apart (under ``"gpu"``), so that CPU and GPU cells never share a table. Results
    of removed parts are dropped (:func:`forget_removed_parts`).
    """
    raw_path = output.with_suffix(".json")
    root = forget_removed_parts(json.loads(raw_path.read_text()) if raw_path.is_file() else {})
    results = root.setdefault("gpu", {}) if cfg.device.startswith("cuda") else root
    kept = {part: MEASURE[part](cfg, results) for part in PARTS if part in parts}
    results["parts"] = sorted(set(results.get("parts", [])) | set(parts), key=PARTS.index)
    commands = results.setdefault("commands", {})
    for part in parts:  # a part redone for some models keeps the command of the rows it kept
        runs = commands.get(part, [])
        runs = [runs] if isinstance(runs, str) else runs
        keep = kept[part]
        commands[part] = ([c for c in runs if c != command] if keep else []) + [command]
    results.setdefault("configs", {}).update({part: asdict(cfg) for part in parts})
    results.setdefault("machines", {}).update({part: machine(cfg.device) for part in parts})
    if parts:
        results["date"] = datetime.date.today().isoformat()
    raw_path.write_text(json.dumps(root, indent=1))
    figures = plot(root, output)
    text = render(cfg, root, command, [f.name for f in figures])
    output.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    d = Config()
    p.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--parts", nargs="*", choices=PARTS, default=list(DEFAULT_PARTS),
                   help="which parts to (re)run; the others are kept from <output>.json (none: only re-render)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, end to end in seconds (for tests)")
    p.add_argument("--sizes", type=int, nargs="*", default=d.sizes, help="sizes of every model (none: variants only)")
    p.add_argument("--local-sizes", type=int, nargs="*", default=d.local_sizes,
                   help="extra sizes for local mode and ops")
    p.add_argument("--variant-sizes", type=int, nargs="*", default=d.variant_sizes)
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=d.variants, metavar="LABEL",
                   help="cost variants to (re)measure, by label (benchmarks/experiments.py; default: all)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=d.models)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed runs per cell at most (within --cell-budget)")
    p.add_argument("--min-repeats", type=int, default=d.min_repeats, help="timed runs per cell at least")
    p.add_argument("--cell-budget", type=float, default=d.cell_budget_s, help="seconds of timed repeats per cell")
    p.add_argument("--cell-timeout", type=float, default=d.cell_timeout_s, help="hard seconds limit per cell")
    p.add_argument("--mem-gib", type=float, default=d.mem_gib, help="address-space cap per cell (CPU)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per cell (0: torch's default)")
    p.add_argument("--device", default=d.device, help="cpu or cuda (bf16 autocast, cells in one process)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (compile time noted per cell)")
    p.add_argument("--jobs", type=int, default=d.jobs,
                   help="learning runs side by side (the cores split between them)")
    p.add_argument("--torch-cluster-python", default=None, help="a Python with torch_cluster, for the comparison")
    p.add_argument("--fit-epochs", type=int, default=d.fit_epochs)
    p.add_argument("--fit-limit-batches", type=int, default=None, help="training/validation batches per fit epoch")
    p.add_argument("--fit-workers", type=int, default=None, help="loader workers of the fit (default: the config's)")
    p.add_argument("--learning-rows", nargs="+", default=d.learning_rows, help="configs/learning/<row>.yaml rows")
    p.add_argument("--learning-seeds", type=int, default=d.learning_seeds, help="paired seeds of the learning part")
    p.add_argument("--deploy-points", type=int, default=d.deploy_points, help="N of the exported graphs (deploy)")
    p.add_argument("--deploy-batches", type=int, nargs="+", default=d.deploy_batches, help="batch sizes timed")
    p.add_argument("--deploy-repeats", type=int, default=d.deploy_repeats, help="timed calls per batch size")
    a = p.parse_args(argv)
    if a.quick:
        cfg = quick_config()
        cfg.threads, cfg.device = a.threads, a.device
    else:
        cfg = Config(a.sizes, a.local_sizes, a.variant_sizes, a.variants, a.models, a.batch, a.repeats, a.min_repeats,
                     a.cell_budget, a.cell_timeout, a.mem_gib, a.threads, a.device, a.compile, jobs=a.jobs,
                     torch_cluster_python=a.torch_cluster_python, fit_epochs=a.fit_epochs,
                     fit_limit_batches=a.fit_limit_batches, fit_workers=a.fit_workers,
                     learning_rows=a.learning_rows, learning_seeds=a.learning_seeds,
                     deploy_points=a.deploy_points, deploy_batches=a.deploy_batches, deploy_repeats=a.deploy_repeats)
    cfg.models = a.models
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda needs a CUDA build of torch and a GPU")
    command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
    run(cfg, a.output, command.strip(), tuple(a.parts))
    print(f"[benchmark] wrote {a.output}")


if __name__ == "__main__":
    main()
