"""The benchmark command end to end on tiny sizes, and the baselines' contracts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from app.benchmark import main
from benchmarks.harness import MODELS, build_classifier, loglog_slope, num_centroids


def _tables(text: str) -> list[list[str]]:
    """Markdown tables as lists of row lines."""
    tables, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    return tables + ([cur] if cur else [])


def test_quick_run_writes_well_formed_markdown(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    main(["--quick", "--output", str(out), "--threads", "1"])
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    for heading in ("## Cost against N", "## Growth of fwd+bwd time", "## Neighbour search", "## Accuracy", "## Targets"):
        assert heading in text
    tables = _tables(text)
    assert len(tables) == 4
    for table in tables:
        widths = {line.count("|") for line in table}
        assert len(widths) == 1, table  # every row has the header's number of cells
        assert re.fullmatch(r"\|(-+:?\|)+|\|(---:?\|)+", table[1].replace("---:", "---")), table[1]
    cost = tables[0]
    for label, _ in MODELS.values():
        assert any(f"| {label} |" in row for row in cost[2:]), label
    assert out.resolve() != Path(__file__).resolve().parents[2] / "BENCHMARKS.md"


@pytest.mark.parametrize("name", list(MODELS))
def test_benchmark_models_share_the_contract(name: str) -> None:
    model = build_classifier(name, 64, num_classes=5)
    pos = torch.rand(2, 64, 3)
    logits = model(pos)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.backbone.out_channels == 512


def test_loglog_slope_and_schedule() -> None:
    assert loglog_slope([1000, 2000, 4000], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    assert loglog_slope([1000], [1.0]) is None
    assert num_centroids(1024) == [512, 256, 128]
