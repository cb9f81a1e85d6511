"""Runs the cells of ``python -m benchmarks``: each in a capped subprocess (or in this process), size-major sweeps,
the cost and ops parts, and the provenance every cell records."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.config import Config
from benchmarks.experiments import COMPILED, REFERENCE, VARIANTS
from benchmarks.harness import OPS, RATIOS, WIDTHS, CellSpec, error_text, loglog_slope, run_cell

REPO = Path(__file__).resolve().parents[1]


def run_child(payload: dict, cfg: Config, python: str | None = None) -> dict:
    """Run one cell, ``python -m benchmarks.harness '<payload>'``, under the memory and time caps; its ``RESULT``
    dict or an error.

    With ``cfg.isolate`` off (and always on CUDA) the cell runs in this process instead (no caps; on CPU
    peak memory then includes what earlier cells left behind).
    """
    if not cfg.isolate or cfg.device.startswith("cuda"):
        return _in_process(payload)

    def cap() -> None:
        limit = int(cfg.mem_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run(
            [python or sys.executable, "-m", "benchmarks.harness", json.dumps(payload)], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=cfg.cell_timeout_s, preexec_fn=cap,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over the {cfg.cell_timeout_s:.0f} s cell limit"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
    return {"error": f"exit code {proc.returncode}: {tail}"}


def _in_process(payload: dict) -> dict:
    """The child's work without a child: same result dict, errors caught the same way."""
    try:
        return asdict(run_cell(CellSpec(**payload)))
    except (RuntimeError, MemoryError) as e:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": error_text(e)}


def _predicted_s(done: list[tuple[int, float]], n: int) -> float | None:
    """Seconds one timed step would take at ``n``, extrapolated from the last two (or one, as N^1.5) sizes."""
    if not done:
        return None
    (n1, t1) = done[-1]
    slope = loglog_slope([n for n, _ in done[-2:]], [t for _, t in done[-2:]]) if len(done) > 1 else 1.5
    return t1 * (n / n1) ** max(slope or 1.5, 1.0)


def sweep(names: list[str], sizes_of: dict[str, list[int]], cfg: Config, key: str, python: str | None = None,
          ratios: list[int] = list(RATIOS),  # noqa: B006 -- never mutated
          steps: int = 2, options: dict | None = None,
          widths: list[int] = list(WIDTHS)) -> dict:  # noqa: B006 -- never mutated
    """Cells of ``names`` over their sizes, ascending; sizes past a failure or the time limit are skipped.

    Size-major: every model's cell at one N runs before any cell at the next N, so the cells a ratio compares
    run minutes apart at most (a shared machine's speed drifts over a long sweep)."""
    results: dict[str, dict[int, dict]] = {name: {} for name in names}
    stamp = provenance(cfg.device)
    done: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    stop: dict[str, str | None] = {name: None for name in names}
    for n in sorted({n for name in names for n in sizes_of[name]}):
        for name in (m for m in names if n in sizes_of[m]):
            guess = _predicted_s(done[name], n)
            if stop[name]:
                results[name][n] = {"error": stop[name]}
                continue
            # a cell takes about: warm-up + timed steps, one profiled step, inference (~⅓ a step each), FLOPs forward
            runs = 1 + max(cfg.min_repeats, 1)
            if guess is not None and max(runs * guess * 4 / 3 + guess,
                                         3 * guess + cfg.cell_budget_s) > cfg.cell_timeout_s:
                stop[name] = (f"skipped: predicted {guess:.0f} s per step from smaller N exceeds the "
                              f"{cfg.cell_timeout_s:.0f} s limit")
                results[name][n] = {"error": stop[name]}
                continue
            spec = CellSpec(name, n, cfg.batch, cfg.repeats, cfg.cell_budget_s, cfg.threads, cfg.device,
                            compile=cfg.compile, ratios=ratios, steps=steps, options=options or {},
                            widths=widths, min_repeats=cfg.min_repeats)
            print(f"[benchmark] {name} N={n} ratios={ratios} T={steps}", flush=True)
            res = {**run_child(asdict(spec), cfg, python), **stamp}
            results[name][n] = res
            print(f"[benchmark]   -> {res.get('error') or res.get('train_ms') or res.get('op_ms'):.6}", flush=True)
            if res.get("error"):
                stop[name] = f"skipped: N={n} failed ({res['error']})"
            else:
                done[name].append((n, res[key] / 1e3))
    return {name: dict(sorted(cells.items())) for name, cells in results.items()}


def run_cost(cfg: Config) -> dict:
    """Every model × N, then the centroid variants; with ``cfg.compile`` only the models, kept apart as the
    ``COMPILED`` variant (beside the eager cells, never over them)."""
    sizes = {name: list(cfg.sizes) + (list(cfg.local_sizes) if name == REFERENCE else []) for name in cfg.models}
    models = sweep(cfg.models, sizes, cfg, "train_ms")
    if cfg.compile:
        compiled = {("" if m == REFERENCE else f"{m}@") + COMPILED: c for m, c in models.items()}
        return {"models": {}, "variants": compiled}
    variants = {}
    if REFERENCE in cfg.models:
        for label, v in VARIANTS.items():
            if label not in cfg.variants:
                continue
            sizes = list(cfg.variant_sizes) + (list(cfg.local_sizes) if v.large else [])
            variants[label] = sweep([REFERENCE], {REFERENCE: sizes}, cfg, "train_ms", ratios=v.ratios, steps=v.steps,
                                    options=v.options, widths=v.widths)[REFERENCE]
            for m in (m for m in v.baselines if m in cfg.models):
                done = sweep([m], {m: list(cfg.variant_sizes)}, cfg, "train_ms", ratios=v.ratios, steps=v.steps,
                             options=v.baselines[m])
                variants[f"{m}@{label}"] = done[m]
    return {"models": models, "variants": variants}


def merge_cells(old: dict, new: dict) -> dict:
    """``{name: {N: cell}}`` tables: the new cells over the old ones (N keys as JSON strings)."""
    merged = {name: {str(n): c for n, c in cells.items()} for name, cells in old.items()}
    for name, cells in new.items():
        merged.setdefault(name, {}).update({str(n): c for n, c in cells.items()})
    return merged


def run_ops(cfg: Config) -> dict:
    op_sizes = {op: list(cfg.sizes) + list(cfg.local_sizes) for op in OPS}
    ops = sweep([op for op in OPS if not op.endswith("torch_cluster")], op_sizes, cfg, "op_ms")
    if cfg.torch_cluster_python:
        theirs = [op for op in OPS if op.endswith("torch_cluster")]
        ops.update(sweep(theirs, op_sizes, cfg, "op_ms", python=cfg.torch_cluster_python))
    return ops


#: The code a model's cells measure besides the harness (a cell measured before its last change is stale): git
#: pathspecs; models/export_fps.py is the export's FPS (app/export.py), which no benchmarked model runs.
MODELS_CODE = ("models", ":(exclude)models/export_fps.py")
MODEL_CODE = {"centroid_local": MODELS_CODE, "centroid_global": MODELS_CODE}
BASELINE_CODE = (*MODELS_CODE, "benchmarks/baselines.py")
HARNESS_CODE = ("benchmarks/harness.py",)


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


def changed_at(paths: tuple[str, ...]) -> str | None:
    """The last commit touching ``paths`` (``None`` outside a git checkout)."""
    return _git("log", "-1", "--format=%h", "--", *paths).stdout.strip() or None


def last_change(model: str) -> str | None:
    """The last commit touching ``model``'s code or the harness (``None`` outside a git checkout)."""
    return changed_at(MODEL_CODE.get(model, BASELINE_CODE) + HARNESS_CODE)


def is_stale(cell: dict, changed: str | None) -> bool:
    """Whether ``cell`` was measured at a commit before ``changed`` (its model's last code change); a cell
    without a commit, or at one this checkout does not know, is stale too."""
    if changed is None:
        return False
    commit = str(cell.get("commit", "")).removesuffix("+dirty")
    return not commit or _git("merge-base", "--is-ancestor", changed, commit).returncode != 0


def drop_stale(tables: dict, variants: bool = False) -> tuple[dict, list[str]]:
    """A ``{name: {N: cell}}`` cost table without the cells older than their model's code, and one line per
    name saying what was dropped. Names: models, or with ``variants`` ``model@variant`` and the centroid
    variants' bare labels."""
    kept, dropped = {}, []
    changes: dict[str, str | None] = {}
    for name, cells in tables.items():
        model = (name.rpartition("@")[0] or REFERENCE) if variants else name
        changed = changes.setdefault(model, last_change(model))
        old = [n for n, c in cells.items() if not (c.get("error") or "").startswith("skipped") and is_stale(c, changed)]
        kept[name] = {n: c for n, c in cells.items() if n not in old}
        if old:
            at = sorted({str(cells[n].get("commit", "no commit")) for n in old})
            dropped.append(f"{name}: N = {', '.join(map(str, old))} (measured at {', '.join(at)}; code changed at "
                           f"{changed})")
    return kept, dropped


def stale_line(record: dict, code: tuple[str, ...], part: str) -> str | None:
    """The report's line for a one-record part (``fit``, ``deploy``) measured before the last change of ``code``;
    ``None`` when it is fresh."""
    changed = changed_at(code)
    if not is_stale(record, changed):
        return None
    return (f"Dropped as stale (measured at {record.get('commit', 'no recorded commit')}; its code changed at "
            f"{changed}): re-measure with `--parts {part}`.")


#: The code the paper-scale fit measures (an older record is stale).
FIT_CODE = (*MODELS_CODE, "datamodules", "configs/model", "configs/modelnet40.yaml", "benchmarks/fit.py",
            "benchmarks/fit_timer.py")


def provenance(device: str = "cpu") -> dict[str, str]:
    """What every cell records: the commit it was measured at (``+dirty`` when the code folders differ from it),
    the date, the machine and the torch version."""
    commit = _git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    dirty = _git("status", "--porcelain", "--", "app", "benchmarks", "models", "datamodules",
                 ":(exclude)benchmarks/results").stdout.strip()  # results being written are not code
    return {"commit": commit + ("+dirty" if dirty else ""), "date": datetime.date.today().isoformat(),
            "machine": machine(device), "torch": torch.__version__}


def machine(device: str = "cpu") -> str:
    """One line naming the CPU, cores, threads, torch and GPU."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads by default), "
            f"Python {platform.python_version()}, GPU: {gpu}")
