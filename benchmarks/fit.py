"""The ``fit`` part of ``python -m benchmarks``: a real training run through the Lightning CLI at paper scale.

``configs/modelnet40.yaml`` (the paper-scale classifier and its recipe, 1024 points) on a generated data set
of ModelNet40's size: 820 training and 206 test shapes for each of the generator's 12 classes (9840 and 2472
shapes; ModelNet40 has 9843 and 2468). The run is ``python -m app fit`` in a subprocess, with the loaders,
validation, checkpointing and learning-rate logging of the config, W&B swapped for CSV files, timed by
``benchmarks.fit_timer.FitTimer``: training samples/s, epoch time with validation, the share of time outside
the training steps (loader wait), and on CUDA the GPU's busy share (with ``configs/trainer/gpu_bf16.yaml``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.runner import FIT_CODE, REPO, provenance, stale_line

CONFIG = "configs/modelnet40.yaml"
#: Generated shapes per class: 12 classes × (820, 206) ≈ ModelNet40's 9843 training and 2468 test shapes.
TRAIN_PER_CLASS, TEST_PER_CLASS = 820, 206


def fit_command(device: str, data_root: str, output: Path, run_dir: Path, epochs: int, limit_batches: int | None,
                workers: int | None) -> list[str]:
    """The ``python -m app fit`` command line of the measurement."""
    cmd = [sys.executable, "-m", "app", "fit", "--config", CONFIG]
    if device.startswith("cuda"):
        cmd += ["--config", "configs/trainer/gpu_bf16.yaml"]
    cmd += [
        "--config", "configs/logger/csv.yaml", f"--trainer.logger.init_args.save_dir={run_dir}",
        "--trainer.max_epochs", str(epochs),
        "--trainer.default_root_dir", str(run_dir),
        "--data.init_args.root", data_root,
        "--data.init_args.format", "generated",
        "--data.init_args.generator.train_per_class", str(TRAIN_PER_CLASS),
        "--data.init_args.generator.val_per_class", "1",
        "--data.init_args.generator.test_per_class", str(TEST_PER_CLASS),
        "--trainer.callbacks+=benchmarks.fit_timer.FitTimer", f"--trainer.callbacks.output={output}",
    ]
    if limit_batches:
        cmd += ["--trainer.limit_train_batches", str(limit_batches), "--trainer.limit_val_batches", str(limit_batches)]
    if workers is not None:
        cmd += ["--data.init_args.num_workers", str(workers)]
    return cmd


def run_fit(device: str, data_root: str, epochs: int, limit_batches: int | None, workers: int | None,
            timeout_s: float) -> dict:
    """Run the measurement; returns ``{"command": ..., "epochs": [...]}`` or ``{"command": ..., "error": ...}``."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "fit.json"
        cmd = fit_command(device, data_root, output, Path(tmp) / "runs", epochs, limit_batches, workers)
        shown = "python " + " ".join(cmd[1:]).replace(str(output), "fit.json").replace(tmp, "<tmp>")
        env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"command": shown, "error": f"over the {timeout_s:.0f} s limit"}
        if proc.returncode != 0 or not output.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"command": shown, "error": f"exit {proc.returncode}: {last[:200]}"}
        return {"command": shown, **json.loads(output.read_text()), **provenance(device)}


def render_fit(fit: dict, h: str) -> list[str]:
    """The report's section on the ``fit`` measurement."""
    title = "A real fit at paper scale (Lightning CLI, configs/modelnet40.yaml, generated data of ModelNet40's size)"
    out = ["", f"{h} {title}", "", f"`{fit['command']}`", ""]
    if fit.get("error"):
        return out + [f"Failed: {fit['error']}"]
    stale = stale_line(fit, FIT_CODE, "fit")
    if stale:
        return out + [stale]
    out += [f"Measured at {fit['commit']} on {fit['date']} ({fit['machine']}).", ""]
    out += ["Training samples/s over the epoch's training batches; epoch time includes validation; *outside steps* is "
            "the time between training batches (the loop waiting on its loader, plus Lightning's bookkeeping) over "
            "the training time; GPU busy over training batches 20–40 of the first epoch (CUDA only).", "",
            "| epoch | training samples | samples/s | training s | epoch s (with validation) | outside steps "
            "| GPU busy |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for e in fit["epochs"]:
        busy = "–" if e.get("gpu_busy_frac") is None else f"{100 * e['gpu_busy_frac']:.0f} %"
        out.append(f"| {e['epoch']} | {e['samples']} | {e['samples_per_s']:.1f} | {e['train_s']:.1f} | "
                   f"{e['epoch_s']:.1f} | {100 * e['wait_frac']:.1f} % | {busy} |")
    return out
