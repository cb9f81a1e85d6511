"""The plots of ``python -m benchmarks``, regenerated from the raw results and written as PNGs beside the report.

- ``<stem>_cost.png``: fwd+bwd time and peak memory against N on log-log axes, every model (its own sampling
  included in the step), median with the spread of the timed runs as error bars.
- ``<stem>_accuracy.png``: test accuracy (mean and 95 % interval over seeds) against training and inference
  throughput, one point per row of the ``learning`` part, the Pareto front (no other row both faster and more
  accurate) drawn as a line.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on benchmark machines
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from benchmarks.harness import MODELS
from benchmarks.runner import drop_stale

#: Two-sided 95 % Student-t quantiles by degrees of freedom (1–10); above that the normal 1.96.
T95 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23)


@dataclass
class AccuracyRow:
    """One model or variant on the accuracy plot: accuracy in %, throughputs in samples/s (``None``: not measured)."""

    label: str
    acc_mean: float
    acc_ci95: float
    train_sps: float | None
    infer_sps: float | None


def ci95(values: list[float]) -> float:
    """Half-width of the 95 % Student-t interval of the mean of ``values`` (0 for one value)."""
    if len(values) < 2:
        return 0.0
    dof = len(values) - 1
    return (T95[dof - 1] if dof <= len(T95) else 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (higher or equal in both coordinates, higher in one),
    sorted by the first coordinate."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(a >= x and b >= y and (a, b) != (x, y) for a, b in points)]
    return sorted(front, key=lambda i: points[i][0])


def learning_rows(results: dict) -> list[AccuracyRow]:
    """Accuracy rows from the ``learning`` part (the users' recipe on the hard task): one per model, its runs'
    mean training and inference samples/s."""
    by_model: dict[str, list[dict]] = {}
    for r in results.get("learning", {}).get("rows", []):
        by_model.setdefault(r["model"], []).append(r)
    return [AccuracyRow(model, statistics.fmean(accs := [100 * r["test_acc"] for r in runs]), ci95(accs),
                        statistics.fmean(r["train_samples_per_s"] for r in runs),
                        statistics.fmean(r["infer_samples_per_s"] for r in runs)) for model, runs in by_model.items()]


def plot_cost(models: dict, path: Path) -> Path | None:
    """Cost against N (``models``: ``{name: {N: cell}}``, N keys as JSON strings); ``None`` when nothing ran."""
    series = {name: sorted((int(n), c) for n, c in cells.items() if not c.get("error"))
              for name, cells in models.items()}
    series = {name: cells for name, cells in series.items() if cells}
    if not series:
        return None
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, cells in series.items():
        ns = [n for n, _ in cells]
        label = MODELS[name][0] if name in MODELS else name
        times = [c["train_ms"] for _, c in cells]
        spread = [c.get("train_range_ms") or [c["train_ms"]] * 2 for _, c in cells]
        err = [[t - s[0] for t, s in zip(times, spread)], [s[1] - t for t, s in zip(times, spread)]]
        ax_t.errorbar(ns, times, yerr=err, marker="o", capsize=3, label=label)
        ax_m.plot(ns, [max(c["peak_mib"], 1e-1) for _, c in cells], marker="o", label=label)
    sizes = sorted({n for cells in series.values() for n, _ in cells})
    for ax, ylabel in ((ax_t, "fwd+bwd ms per batch (median, min–max)"), (ax_m, "peak MiB of the step")):
        ax.set(xscale="log", yscale="log", xlabel="N (points per cloud)", ylabel=ylabel)
        ax.set_xticks(sizes, [str(n) for n in sizes], minor=False)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.suptitle("Training step cost against N (sampling included)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy(rows: list[AccuracyRow], path: Path) -> Path | None:
    """Accuracy against training and inference throughput, the Pareto front of each marked; ``None`` when no
    row has a throughput."""
    panels = [(key, title) for key, title in (("train_sps", "training samples/s"), ("infer_sps", "inference samples/s"))
              if any(getattr(r, key) for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        shown = [r for r in rows if getattr(r, key)]
        points = [(getattr(r, key), r.acc_mean) for r in shown]
        for r, (x, y) in zip(shown, points):
            ax.errorbar([x], [y], yerr=[r.acc_ci95], marker="o", capsize=3, label=r.label)
        front = pareto_front(points)
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", lw=1, label="Pareto front")
        ax.set(xscale="log", xlabel=title, ylabel="test accuracy % (mean, 95 % interval)")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(results: dict, output: Path, rows: list[AccuracyRow] | None = None) -> list[Path]:
    """Every plot of the (CPU) results beside ``output``; the paths written. ``rows``: the accuracy plot's rows
    (default: the ``learning`` part's, :func:`learning_rows`)."""
    fresh, _ = drop_stale(results.get("cost", {}).get("models", {}))  # the tables' cells, no stale ones
    if rows is None:
        rows = learning_rows(results)
    made = [plot_cost(fresh, output.with_name(f"{output.stem}_cost.png")),
            plot_accuracy(rows, output.with_name(f"{output.stem}_accuracy.png"))]
    return [p for p in made if p is not None]
