"""Mean ± std over runs (seeds) of the test metrics: ``python -m app.aggregate RUN_DIR_OR_JSON [...]``.

Reads the ``test_metrics*.json`` that ``python -m app test`` writes (a folder is searched recursively) and prints
one row per checkpoint kind (``last``, ``best``, ...), so last-epoch and best-epoch numbers are never averaged
together. Cells are ``mean ± sample std`` in percent over the runs of that row (std needs n ≥ 2).
``--markdown`` prints a Markdown table, ``--json`` machine-readable numbers (fractions, not percent).
See docs/reporting.md for what each number means and the 3-seed recipe.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Reported metrics per task, in table order (keys of test_metrics.json without the ``test/`` prefix).
METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("acc", "macc", "acc_vote", "macc_vote"),
    "segmentation": ("miou_instance", "miou_class"),
}
KINDS = ("last", "best", "other", "none", "unknown")  # row order; ``unknown``: file written before the record


class InputError(Exception):
    """A problem with the inputs, reported as one line naming the file."""


@dataclass
class Run:
    """One test evaluation read from a ``test_metrics.json``."""

    path: Path
    task: str
    kind: str
    epoch: int | None
    names: list[str] | None
    metrics: dict[str, float]


@dataclass
class Stat:
    """Mean and sample std of one metric over the runs of one checkpoint kind."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None


def find_files(inputs: list[str]) -> list[Path]:
    """The JSON files named, plus every ``test_metrics*.json`` below the folders named (each once, sorted per input)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.rglob("test_metrics*.json"))
            if not found:
                raise InputError(f"{path}: no test_metrics*.json below this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    unique = {f.resolve(): f for f in files}
    return list(unique.values())


def load_run(path: Path) -> Run:
    """Read and check one ``test_metrics.json``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    metrics = data.get("metrics") if isinstance(data, dict) else None
    if not isinstance(metrics, dict) or not any(str(k).startswith("test/") for k in metrics):
        raise InputError(f"{path}: not a test_metrics.json of `python -m app test` (no 'metrics' with test/ keys)")
    values = {k[len("test/"):]: v for k, v in metrics.items() if isinstance(v, (int, float)) and k.startswith("test/")}
    task = next((t for t, names in METRICS.items() if names[0] in values), None)
    if task is None:
        raise InputError(f"{path}: has neither test/acc nor test/miou_instance")
    checkpoint = data.get("checkpoint") if isinstance(data.get("checkpoint"), dict) else {}
    kind = checkpoint.get("kind") if checkpoint.get("kind") in KINDS else "unknown"
    return Run(path, task, kind, checkpoint.get("epoch"), data.get("names"), values)


def load_runs(inputs: list[str]) -> list[Run]:
    """All runs of the inputs; they must be of one task and one data set (same class/category names)."""
    runs = [load_run(f) for f in find_files(inputs)]
    first = runs[0]
    for run in runs[1:]:
        if run.task != first.task:
            raise InputError(
                f"{run.path}: {run.task} results, but {first.path} is {first.task}: aggregate one task at a time"
            )
        if run.names != first.names:
            raise InputError(f"{run.path}: class/category names differ from {first.path}: not the same data set")
    return runs


def summarize(runs: list[Run]) -> dict[str, dict[str, Stat]]:
    """``{kind: {metric: Stat}}`` over the runs, kinds in ``KINDS`` order, metrics in ``METRICS`` order."""
    table: dict[str, dict[str, Stat]] = {}
    for kind in KINDS:
        group = [r for r in runs if r.kind == kind]
        stats = {m: Stat([r.metrics[m] for r in group if m in r.metrics]) for m in METRICS[runs[0].task]}
        if group:
            table[kind] = {m: s for m, s in stats.items() if s.n}
    return table


def _cell(stat: Stat | None, n: int) -> str:
    if stat is None:
        return "–"
    text = f"{100 * stat.mean:.2f}" if stat.std is None else f"{100 * stat.mean:.2f} ± {100 * stat.std:.2f}"
    return text if stat.n == n else f"{text} (n={stat.n})"


def format_table(runs: list[Run], markdown: bool = False) -> str:
    """The summary as aligned text or as a Markdown table."""
    table = summarize(runs)
    metrics = [m for m in METRICS[runs[0].task] if any(m in row for row in table.values())]
    header = ["checkpoint", "n", *metrics]
    rows = []
    for kind, stats in table.items():
        group = [r for r in runs if r.kind == kind]
        rows.append([kind, str(len(group)), *(_cell(stats.get(m), len(group)) for m in metrics)])
    title = f"{runs[0].task}: mean ± sample std in % over n runs (seeds), one row per checkpoint kind"
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join([f"{title}\n", *lines])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join([title, *lines])


def to_json(runs: list[Run]) -> dict[str, Any]:
    """The summary as plain data: fractions (not percent), with the files and epochs behind every row."""
    groups: dict[str, Any] = {}
    for kind, stats in summarize(runs).items():
        group = [r for r in runs if r.kind == kind]
        groups[kind] = {
            "n": len(group),
            "files": [str(r.path) for r in group],
            "epochs": [r.epoch for r in group],
            "metrics": {m: {"n": s.n, "mean": s.mean, "std": s.std, "values": s.values} for m, s in stats.items()},
        }
    return {"task": runs[0].task, "std": "sample (n-1)", "groups": groups}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 on bad input, with one line on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m app.aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_JSON", help="test_metrics*.json files or folders")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="print a Markdown table")
    fmt.add_argument("--json", action="store_true", help="print JSON (fractions, with per-run values)")
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.inputs)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(to_json(runs), indent=2) if args.json else format_table(runs, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
