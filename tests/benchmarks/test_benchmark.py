"""The benchmark command end to end on tiny sizes, and the baselines' contracts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from app.benchmark import CANDIDATES, VARIANTS, main
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
    for heading in ("## Cost against N", "## Centroid backbone variants", "## Growth of fwd+bwd time",
                    "## Neighbour search", "## Equal-budget training", "## Targets"):
        assert heading in text
    tables = _tables(text)
    assert len(tables) == 5
    for table in tables:
        widths = {line.count("|") for line in table}
        assert len(widths) == 1, table  # every row has the header's number of cells
        assert re.fullmatch(r"\|(-+:?\|)+|\|(---:?\|)+", table[1].replace("---:", "---")), table[1]
    cost = tables[0]
    for label, _ in MODELS.values():
        assert any(f"| {label} |" in row for row in cost[2:]), label
    assert out.resolve() != Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
    variants = tables[1]
    for variant, (*_, baselines) in VARIANTS.items():  # every variant, and its baselines at the same schedule
        assert any(f"| Centroid (local), {variant} |" in row for row in variants), variant
        for model in baselines:
            assert any(f"| {MODELS[model][0]}, {variant} |" in row for row in variants), (model, variant)
    train = tables[4]
    assert len(train) == 2 + 3 and all(re.search(r"\| \d+\.\d ± \d+\.\d \|", row) for row in train[2:]), train
    raw = json.loads(out.with_suffix(".json").read_text())
    assert set(raw["train"]) == set(list(CANDIDATES)[:3]) and all(len(runs) == 2 for runs in raw["train"].values())


def test_a_part_can_be_rerun_keeping_the_others(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    main(["--quick", "--output", str(out), "--threads", "1", "--parts", "ops"])
    raw = json.loads(out.with_suffix(".json").read_text())
    raw["train"] = {"Kept row": [{"test_acc": 0.5, "train_s": 1.0, "curve": [1.0]}]}
    out.with_suffix(".json").write_text(json.dumps(raw))
    main(["--quick", "--output", str(out), "--threads", "1", "--parts", "ops"])
    text = out.read_text()
    assert "| Kept row | 50.0 ± 0.0 |" in text and "## Cost against N" in text and "fps_order_data" in text


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
    assert num_centroids(1024, [4, 8, 16]) == [256, 128, 64]
