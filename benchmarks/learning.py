"""The learning benchmark: the users' recipe (``python -m app fit`` then ``python -m app test``) per row and seed
on the hard generated task (docs/hard_task.md), and its table (docs/hard_task.md §3).

Protocol: every choice is made on the validation split (a held-out part of train); the test split is read once
per final row and seed, at the last epoch. Seed s is given to every row twice: ``seed_everything`` (initialisation)
and the data modules' ``data_seed`` (data order, augmentation, dropout: docs/reporting.md), so the rows of a seed
see the same data: paired differences.

    python -m benchmarks.learning --rows centroid pointnet2 full_attention --seeds 5 \
        --output benchmarks/results/learning.json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from benchmarks.experiments import LEARNING_ROWS, LEARNING_VARIANTS
from benchmarks.runner import provenance
from datamodules.synthetic.hard import HARD_VERSION, HardConfig, generate_hard

CONFIGS = Path("configs/learning")
DATA_ROOT = Path("data/hard_modelnet")
TASK = HardConfig()  # the task at its current knobs (docs/hard_task.md §2)
#: ``--quick``: a few batches of one epoch, for an end-to-end test of the machinery (not a result).
#: Two-sided 95 % Student-t quantiles t(0.975, df) for df = 1..10 (larger df: the normal 1.96 within 6 %).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
QUICK = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]


def _run(args: list[str], threads: int | None = None) -> float:
    """Run ``python -m app ARGS`` (``threads``: its torch threads); its wall time in seconds. A failure raises
    with the run's last output."""
    env = {**os.environ, "WANDB_MODE": "disabled", **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"python -m app {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - start


def last_val_acc(run_dir: Path) -> float:
    """``val/acc`` of the last logged epoch in the run's CSV log."""
    rows = [r for f in sorted(run_dir.glob("csv/version_*/metrics.csv")) for r in csv.DictReader(f.open())]
    values = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    if not values:
        raise RuntimeError(f"{run_dir}: no val/acc in the CSV log")
    return values[-1]


def task_stamp() -> dict:
    """What a result row records of its task: rows of another task are not mixed into a table."""
    return {"version": HARD_VERSION, **asdict(TASK)}


def _params(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k)


def run_row(row: str, seed: int, out: Path, quick: bool = False, threads: int | None = None) -> dict:
    """Fit and test one row at one seed (``threads``: torch threads of each run); the result row
    (docs/hard_task.md §3)."""
    run_dir = out / row / str(seed)
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun starts clean: its logs are the only ones read
    config = [*row_config(row), "--data.init_args.root", str(DATA_ROOT)]
    fit_wall = _run(["fit", *config, "--seed_everything", str(seed), "--data.init_args.data_seed", str(seed),
                     "--trainer.default_root_dir", str(run_dir),
                     "--trainer.logger.init_args.save_dir", str(run_dir), *(QUICK if quick else [])], threads)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    test_wall = _run(["test", *config, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(run_dir),
                      "--trainer.logger.init_args.save_dir", str(run_dir)], threads)
    test = json.loads(max(run_dir.glob("csv/version_*/test_metrics*.json")).read_text())
    meta = torch.load(ckpt, map_location="cpu", weights_only=True)
    epochs, steps = meta["epoch"] + 1, meta["global_step"]
    batch = meta["datamodule_hyper_parameters"]["batch_size"]
    return {
        "model": row, "variant": "last epoch", "seed": seed, "val_acc": last_val_acc(run_dir),
        "test_acc": test["metrics"]["test/acc"], "epochs": epochs,
        "train_samples_per_s": steps * batch / fit_wall, "infer_samples_per_s": test["num_samples"] / test_wall,
        "params": _params(meta["state_dict"]), "threads": threads, "task": task_stamp(), **provenance(),
    }


def load_rows(path: Path) -> list[dict]:
    """The result rows kept in ``path`` (none when it does not exist)."""
    return json.loads(path.read_text()) if path.is_file() else []


def save_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))


def run_matrix(rows: list[str], seeds: int, output: Path, runs: Path, quick: bool = False,
               jobs: int = 1) -> list[dict]:
    """Every (row, seed) not yet in the rows file ``output`` (measured on this task), seed-major, ``jobs`` runs side
    by side with ``os.cpu_count() // jobs`` torch threads each; the file is rewritten after each finished run (rows
    of another task are dropped from it). Returns its rows."""
    generate_hard(DATA_ROOT, TASK)
    results = [r for r in load_rows(output) if r.get("task") == task_stamp()]
    save_rows(output, results)
    done = {(r["model"], r["seed"]) for r in results}
    todo = [(row, seed) for seed in range(seeds) for row in rows if (row, seed) not in done]
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each job is a subprocess: threads only wait
        for result in pool.map(lambda job: run_row(job[0], job[1], runs, quick, threads), todo):
            results.append(result)
            print(json.dumps(result), flush=True)
            save_rows(output, results)
    return results


def interval(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample std and the 95 % Student-t interval of the mean (nan half-width for one value)."""
    a = np.asarray(values, dtype=float)
    mean = float(a.mean())
    if len(a) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(a.std(ddof=1))
    half = (T975[len(a) - 2] if len(a) <= len(T975) + 1 else 1.96) * std / math.sqrt(len(a))
    return mean, std, mean - half, mean + half


def render(rows: list[dict], baselines: tuple[str, ...] = ("pointnet2", "full_attention")) -> str:
    """The markdown table: test accuracy (%) mean ± std, 95 % t-interval, val accuracy, and the paired difference
    (same seeds) against the best baseline by mean *validation* accuracy, with its 95 % interval."""
    by_model: dict[str, dict[int, dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["seed"]] = r
    present = [b for b in baselines if b in by_model]
    best = max(present, key=lambda b: np.mean([r["val_acc"] for r in by_model[b].values()])) if present else None
    lines = [f"Paired differences against the best baseline by validation accuracy: {best or 'none'}.", "",
             ("| model | seeds | val acc % | test acc % (mean ± std) | test 95 % CI "
              "| Δ test vs best baseline (95 % CI) | train samples/s | infer samples/s | params |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for model, seeds in by_model.items():
        test = [100 * r["test_acc"] for r in seeds.values()]
        m, s, lo, hi = interval(test)
        val = np.mean([100 * r["val_acc"] for r in seeds.values()])
        delta = "—"
        if best is not None and model != best:
            shared = sorted(set(seeds) & set(by_model[best]))
            d = [100 * (seeds[k]["test_acc"] - by_model[best][k]["test_acc"]) for k in shared]
            if d:
                dm, _, dlo, dhi = interval(d)
                delta = f"{dm:+.1f} [{dlo:+.1f}, {dhi:+.1f}] (n={len(d)})"
        first = next(iter(seeds.values()))
        lines.append(
            f"| {model} | {len(test)} | {val:.1f} | {m:.1f} ± {s:.1f} | [{lo:.1f}, {hi:.1f}] | {delta} | "
            f"{np.mean([r['train_samples_per_s'] for r in seeds.values()]):.1f} | "
            f"{np.mean([r['infer_samples_per_s'] for r in seeds.values()]):.1f} | {first['params']:,} |"
        )
    return "\n".join(lines) + "\n"


def targets(rows: list[dict], baselines: tuple[str, ...] = ("pointnet2", "full_attention")) -> list[str]:
    """The evidence issue's targets on the test accuracies: the best baseline (by mean validation accuracy) between
    70 and 92 %, the spread of the model means at least 3x the largest std, the centroid row at least as accurate
    as the PointNet++ row on the mean."""
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    if len(by_model) < 2 or min(len(v) for v in by_model.values()) < 2:
        return ["- Learning: fewer than two rows with two seeds each: no verdict."]
    stats = {m: interval([100 * r["test_acc"] for r in runs]) for m, runs in by_model.items()}
    val = {m: np.mean([r["val_acc"] for r in runs]) for m, runs in by_model.items()}
    lines = []
    present = [b for b in baselines if b in by_model]
    if present:
        best = max(present, key=lambda b: val[b])
        m = stats[best][0]
        lines.append(f"- Learning: the task separates, best baseline ({best}, by validation) between 70 and 92 %: "
                     f"**{'met' if 70 <= m <= 92 else 'not met'}** ({m:.1f} %).")
    means, stds = [s[0] for s in stats.values()], [s[1] for s in stats.values()]
    spread = max(means) - min(means)
    separated = spread > 0 and spread >= 3 * max(stds)
    lines.append(f"- Learning: spread of the model means ≥ 3× the largest std: **{'met' if separated else 'not met'}** "
                 f"({spread:.1f} vs 3 × {max(stds):.1f} points).")
    if "centroid" in stats and "pointnet2" in stats:
        c, p = stats["centroid"][0], stats["pointnet2"][0]
        verdict = "met" if c >= p else "not met"
        lines.append(f"- Learning: centroid ≥ PointNet++ on the mean test accuracy: **{verdict}** ({c:.1f} vs "
                     f"{p:.1f} %; paired difference in the table).")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(LEARNING_ROWS),
                        help="experiment files configs/learning/<row>.yaml, or variants of them "
                             f"({', '.join(LEARNING_VARIANTS)})")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1, the same for every row")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/learning.json"))
    parser.add_argument("--runs", type=Path, default=Path("runs/learning"), help="run folders")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (cores split between them)")
    parser.add_argument("--quick", action="store_true", help="one short epoch per run: tests the machinery only")
    args = parser.parse_args(argv)
    check_rows(args.rows)
    rows = run_matrix(args.rows, args.seeds, args.output, args.runs, args.quick, args.jobs)
    args.output.with_suffix(".md").write_text(render(rows))
    print(render(rows))


def row_config(row: str) -> list[str]:
    """The CLI arguments of a row: its experiment file, or a variant's base file and its overrides
    (``benchmarks.experiments.LEARNING_VARIANTS``)."""
    base, overrides = LEARNING_VARIANTS.get(row, (row, ()))
    return ["--config", str(CONFIGS / f"{base}.yaml"), *overrides]


def check_rows(rows: list[str]) -> None:
    """Exit in one line when a row has no experiment file."""
    for row in rows:
        path = CONFIGS / f"{LEARNING_VARIANTS.get(row, (row,))[0]}.yaml"
        if not path.is_file():
            raise SystemExit(f"{path}: no such row config (row {row!r})")


if __name__ == "__main__":
    main()
