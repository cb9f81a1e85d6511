"""``python -m app.aggregate``: mean ± sample std per checkpoint kind, and one clear line on bad input."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from app.aggregate import main

REPO = Path(__file__).resolve().parents[2]
NAMES = ["chair", "table"]


def _write(
    path: Path, metrics: dict[str, float], kind: str | None = "last", epoch: int = 9, names: list[str] = NAMES
) -> Path:
    """A test_metrics.json as ``TestMetricsWriter`` writes it (``kind=None``: a file from before the record)."""
    payload = {"metrics": {f"test/{k}": v for k, v in metrics.items()} | {"test/loss": 0.5},
               "details": {}, "names": names, "num_samples": 10}
    if kind is not None:
        payload["checkpoint"] = {"path": f"runs/x/{kind}.ckpt", "kind": kind, "epoch": epoch}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


LAST = [(0.90, 0.85, 0.91), (0.92, 0.86, 0.93), (0.91, 0.80, 0.94)]  # acc, macc, acc_vote per seed
BEST = [(0.95, 0.90), (0.93, 0.91), (0.94, 0.88)]  # acc, macc (tested without voting)


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    """Three seeds, each tested on last (with voting) and best (without), as separate run folders."""
    for s, ((a, m, v), (ba, bm)) in enumerate(zip(LAST, BEST)):
        _write(tmp_path / f"seed{s}" / "version_1" / "test_metrics.json", {"acc": a, "macc": m, "acc_vote": v})
        _write(tmp_path / f"seed{s}" / "version_2" / "test_metrics.json", {"acc": ba, "macc": bm}, kind="best", epoch=s)
    return tmp_path


def test_json_mean_and_sample_std_per_kind(seeds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(seeds), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "classification" and list(out["groups"]) == ["last", "best"]
    last, best = out["groups"]["last"], out["groups"]["best"]
    assert last["n"] == best["n"] == 3 and best["epochs"] == [0, 1, 2]
    for i, name in enumerate(["acc", "macc", "acc_vote"]):
        values = [row[i] for row in LAST]
        assert last["metrics"][name]["mean"] == pytest.approx(statistics.mean(values))
        assert last["metrics"][name]["std"] == pytest.approx(statistics.stdev(values))
    assert best["metrics"]["acc"]["std"] == pytest.approx(statistics.stdev([r[0] for r in BEST]))
    assert "acc_vote" not in best["metrics"]  # never borrowed from the other kind


def test_text_and_markdown_tables(seeds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acc = [r[0] for r in LAST]
    expected = f"{100 * statistics.mean(acc):.2f} ± {100 * statistics.stdev(acc):.2f}"
    assert main([str(seeds)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[1].split() == ["checkpoint", "n", "acc", "macc", "acc_vote"]
    assert text[2].startswith("last") and expected in text[2]
    assert text[3].startswith("best") and text[3].rstrip().endswith("–")  # best has no vote
    assert main([str(seeds), "--markdown"]) == 0
    md = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert md[0] == "| checkpoint | n | acc | macc | acc_vote |" and md[1] == "|---|---|---|---|---|"
    assert md[2].startswith("| last | 3 | " + expected)


def test_segmentation_partial_metric_and_single_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _write(tmp_path / "a.json", {"miou_instance": 0.80, "miou_class": 0.70})
    b = _write(tmp_path / "b.json", {"miou_instance": 0.84})
    c = _write(tmp_path / "c.json", {"miou_instance": 0.75, "miou_class": 0.65}, kind=None)
    assert main([str(a), str(b), str(c), str(a)]) == 0  # a given twice counts once
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("segmentation")
    assert lines[1].split() == ["checkpoint", "n", "miou_instance", "miou_class"]
    assert lines[2].split()[:2] == ["last", "2"] and "70.00 (n=1)" in lines[2]  # one value: no std, n shown
    assert lines[3].split() == ["unknown", "1", "75.00", "65.00"]


def _bad_input(folder: Path, case: str) -> Path:
    """One bad input next to a good classification result."""
    if case == "missing":
        return folder / "missing.json"
    if case == "empty folder":
        (folder / "empty").mkdir()
        return folder / "empty"
    if case in ("broken", "foreign"):
        path = folder / f"{case}.json"
        path.write_text("{oops" if case == "broken" else '{"acc": 1}')
        return path
    if case == "segmentation":
        return _write(folder / "seg.json", {"miou_instance": 0.8})
    return _write(folder / "names.json", {"acc": 0.8}, names=["x", "y"])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such file or folder"),
        ("empty folder", "no test_metrics*.json below this folder"),
        ("broken", "not valid JSON"),
        ("foreign", "not a test_metrics.json"),
        ("segmentation", "aggregate one task at a time"),
        ("other names", "not the same data set"),
    ],
)
def test_bad_input_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    good = _write(tmp_path / "good.json", {"acc": 0.9, "macc": 0.8})
    bad = _bad_input(tmp_path, case)
    assert main([str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {bad}") and message in err


def test_module_entry_point_exit_status(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "app.aggregate", str(_write(tmp_path / "r.json", {"acc": 0.9}))],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0 and "90.00" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "app.aggregate", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and str(tmp_path / "nope") in bad.stderr
