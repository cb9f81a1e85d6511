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
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.runner import provenance
from datamodules.synthetic.hard import HardConfig, generate_hard

CONFIGS = Path("configs/learning")
DATA_ROOT = Path("data/hard_modelnet")
TASK = HardConfig()  # the task at its current knobs (docs/hard_task.md §2)
#: ``--quick``: a few batches of one epoch, for an end-to-end test of the machinery (not a result).
#: Two-sided 95 % Student-t quantiles t(0.975, df) for df = 1..10 (larger df: the normal 1.96 within 6 %).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
QUICK = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]


def _run(args: list[str]) -> float:
    """Run ``python -m app ARGS``; its wall time in seconds. A failure raises with the run's last output."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, check=False)
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


def _params(state: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for k, v in state.items() if v.is_floating_point() and "running_" not in k)


def run_row(row: str, seed: int, out: Path, quick: bool = False) -> dict:
    """Fit and test one row at one seed; the result row (docs/hard_task.md §3)."""
    run_dir = out / row / str(seed)
    config = ["--config", str(CONFIGS / f"{row}.yaml"), "--data.init_args.root", str(DATA_ROOT)]
    fit_wall = _run(["fit", *config, "--seed_everything", str(seed), "--data.init_args.data_seed", str(seed),
                     "--trainer.default_root_dir", str(run_dir),
                     "--trainer.logger.init_args.save_dir", str(run_dir), *(QUICK if quick else [])])
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    test_wall = _run(["test", *config, "--ckpt_path", str(ckpt), "--trainer.default_root_dir", str(run_dir),
                      "--trainer.logger.init_args.save_dir", str(run_dir)])
    test = json.loads(max(run_dir.glob("csv/version_*/test_metrics*.json")).read_text())
    meta = torch.load(ckpt, map_location="cpu", weights_only=True)
    epochs, steps = meta["epoch"] + 1, meta["global_step"]
    batch = meta["datamodule_hyper_parameters"]["batch_size"]
    return {
        "model": row, "variant": "last epoch", "seed": seed, "val_acc": last_val_acc(run_dir),
        "test_acc": test["metrics"]["test/acc"], "epochs": epochs,
        "train_samples_per_s": steps * batch / fit_wall, "infer_samples_per_s": test["num_samples"] / test_wall,
        "params": _params(meta["state_dict"]), **provenance(),
    }


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=["centroid", "pointnet2", "full_attention"],
                        help="experiment files configs/learning/<row>.yaml")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..S-1, the same for every row")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/learning.json"))
    parser.add_argument("--runs", type=Path, default=Path("runs/learning"), help="run folders")
    parser.add_argument("--quick", action="store_true", help="one short epoch per run: tests the machinery only")
    args = parser.parse_args(argv)
    for row in args.rows:
        if not (CONFIGS / f"{row}.yaml").is_file():
            raise SystemExit(f"{CONFIGS / (row + '.yaml')}: no such row config")
    generate_hard(DATA_ROOT, TASK)
    rows = json.loads(args.output.read_text()) if args.output.is_file() else []
    done = {(r["model"], r["seed"]) for r in rows}
    for seed in range(args.seeds):  # seed-major: a partial matrix stays paired
        for row in args.rows:
            if (row, seed) in done:
                continue
            rows.append(run_row(row, seed, args.runs, args.quick))
            print(json.dumps(rows[-1]), flush=True)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(rows, indent=1))
    args.output.with_suffix(".md").write_text(render(rows))
    print(render(rows))


if __name__ == "__main__":
    main()
