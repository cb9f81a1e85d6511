"""The ``deploy`` part of ``python -m benchmarks``: exported files against eager torch (docs/export.md §5).

The users' commands in subprocesses (the benchmarks never import the app): ``python -m app fit`` of
configs/demo.yaml for a few batches at ``deploy_points`` points (a checkpoint of the demo model at that N: the
weights do not change the cost), then per format ``python -m app export --time --json``, which writes the file,
checks it against the eager model on 32 test clouds and times it against eager torch (no grad, the model's own
kernels and FPS operator), one warm-up and the timed calls of each in turn.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.runner import REPO, provenance, stale_line
from benchmarks.verdicts import speed_verdict

CONFIG = "configs/demo.yaml"
FORMATS = ("onnx", "exported-program")
#: The code the measurement depends on: a record older than its last change is stale (not shown).
CODE = ("models", "app/export.py", "benchmarks/deploy.py", "configs/demo.yaml", "configs/model")
LABELS = {"onnx": "ONNX (onnxruntime CPU)", "exported-program": "exported program (torch.export.load)"}


def _run(cmd: list[str], cwd: Path, timeout_s: float) -> str | None:
    """Run ``cmd``; ``None`` on success, else a one-line reason."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"over the {timeout_s:.0f} s limit"
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"exit {proc.returncode}: {last[:200]}"
    return None


def commands(num_points: int, batches: list[int], repeats: int, fit_batches: int, tmp: Path) -> dict[str, list[str]]:
    """The fit and the export command lines (``tmp``: the run folder)."""
    fit = [sys.executable, "-m", "app", "fit", "--config", CONFIG, "--config", "configs/logger/csv.yaml",
           f"--trainer.logger.init_args.save_dir={tmp}", "--trainer.max_epochs", "1",
           "--trainer.limit_train_batches", str(fit_batches), "--trainer.limit_val_batches", "1",
           "--trainer.default_root_dir", str(tmp / "run"), "--data.init_args.num_points", str(num_points)]
    out = {"fit": fit}
    for fmt in FORMATS:
        out[fmt] = [sys.executable, "-m", "app", "export", "--ckpt", str(tmp / "run" / "checkpoints" / "last.ckpt"),
                    "--format", fmt, "--out", str(tmp / f"model.{fmt}"), "--time", "--batches", *map(str, batches),
                    "--repeats", str(repeats), "--json", str(tmp / f"{fmt}.json")]
    return out


def run_deploy(num_points: int, batches: list[int], repeats: int, fit_batches: int, timeout_s: float) -> dict:
    """Fit, then export, check and time every format; ``{"commands", "formats": {fmt: record}, provenance}``, a
    format that failed holding ``{"error": ...}``."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cmds = commands(num_points, batches, repeats, fit_batches, tmp)
        shown = {k: "python " + " ".join(c[1:]).replace(name, "<tmp>") for k, c in cmds.items()}
        result = {"commands": shown, "num_points": num_points, **provenance(), "formats": {}}
        error = _run(cmds["fit"], REPO, timeout_s)
        for fmt in FORMATS:
            error_fmt = error or _run(cmds[fmt], REPO, timeout_s)
            record = tmp / f"{fmt}.json"
            result["formats"][fmt] = {"error": error_fmt} if error_fmt else json.loads(record.read_text())
    return result


def _cell(ms: list[float]) -> str:
    return f"{statistics.median(ms):.1f} ({min(ms):.1f}–{max(ms):.1f})"


def deploy_verdict(timing: dict) -> tuple[str, str]:
    """Is the file at least as fast as eager torch (ratio ≥ 1 across the spread of the timed calls)?"""
    def cell(ms: list[float]) -> dict:
        return {"train_ms": statistics.median(ms), "train_range_ms": [min(ms), max(ms)]}

    return speed_verdict(cell(timing["eager_ms"]), cell(timing["file_ms"]), 1.0)


def render_deploy(deploy: dict, h: str) -> list[str]:
    """The report's section on the ``deploy`` measurement (a line saying it is stale instead of a stale table)."""
    out = ["", f"{h} Shipped model: exported files against eager torch (CPU inference)", "",
           *[f"- {k}: `{c}`" for k, c in deploy["commands"].items()], ""]
    stale = stale_line(deploy, CODE, "deploy")
    if stale:
        return out + [stale]
    out += [
           f"Measured at {deploy['commit']} on {deploy['date']} ({deploy['machine']}). The demo model (128 → 32 → 8 "
           f"centroids) at N = {deploy['num_points']}, raw clouds in random order: the file holds the first stage's "
           "exact FPS (unrolled `ArgMax` steps) and the pure-torch gathered per-pair kernel; eager torch runs the "
           "model's FPS operator and its chosen CPU kernels. Milliseconds per call, median (fastest–slowest) of the "
           "timed calls; *speed-up* = eager / file (> 1: the file is faster), *met* only when the slowest file call "
           "against the fastest eager one is still ≥ 1×.", "",
           "| format | batch | file ms | eager ms | speed-up | at least as fast | parity on 32 test clouds | export |",
           "|---|---:|---:|---:|---:|---|---|---|"]
    for fmt, rec in deploy["formats"].items():
        if rec.get("error"):
            out.append(f"| {LABELS[fmt]} | – | – | – | – | failed: {rec['error']} | – | – |")
            continue
        parity = rec["parity"]
        checked = f"max abs Δ {parity['max_abs_diff']:.1e}, same predictions: {parity['same_predictions']}"
        for t in rec["timings"]:
            verdict, ratio = deploy_verdict(t)
            out.append(f"| {LABELS[fmt]} | {t['batch']} | {_cell(t['file_ms'])} | {_cell(t['eager_ms'])} | "
                       f"{ratio.split(' ')[0]} | {verdict} ({len(t['file_ms'])} calls each) | {checked} | "
                       f"{rec['export_s']:.0f} s, {rec['file_mib']:.1f} MiB |")
    return out
