"""benchmarks.learning: the statistics, the table and one quick end-to-end row (fit + test subprocesses)."""

import json
import math

import pytest

from benchmarks import learning


def _row(model: str, seed: int, test: float, val: float) -> dict:
    return {"model": model, "seed": seed, "test_acc": test, "val_acc": val, "train_samples_per_s": 10.0,
            "infer_samples_per_s": 20.0, "params": 1234}


def test_interval_is_the_t_interval():
    mean, std, _, hi = learning.interval([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert hi - mean == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(learning.interval([1.0])[1])


def test_render_pairs_seeds_against_the_best_baseline_by_validation():
    rows = [_row("pointnet2", s, 0.8 + 0.01 * s, 0.9) for s in range(3)]
    rows += [_row("full_attention", s, 0.9, 0.5) for s in range(3)]  # better on test, worse on val: not "best"
    rows += [_row("centroid", s, 0.82 + 0.01 * s, 0.8) for s in range(3)]
    table = learning.render(rows)
    assert "best baseline by validation accuracy: pointnet2" in table
    centroid = next(line for line in table.splitlines() if line.startswith("| centroid"))
    assert "+2.0 [+2.0, +2.0] (n=3)" in centroid  # the paired difference has no seed-to-seed spread
    assert "81.0 ± 1.0" in next(line for line in table.splitlines() if line.startswith("| pointnet2"))


@pytest.mark.slow
def test_quick_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "learning.json"
    monkeypatch.setattr(learning, "TASK", learning.HardConfig(train_per_class=2, test_per_class=1))
    monkeypatch.setattr(learning, "DATA_ROOT", tmp_path / "data")
    learning.main(["--rows", "pointnet2", "--seeds", "1", "--output", str(out), "--runs", str(tmp_path / "runs"),
                   "--quick"])
    (row,) = json.loads(out.read_text())
    assert row["model"] == "pointnet2" and 0 <= row["test_acc"] <= 1 and row["params"] > 0
    assert out.with_suffix(".md").read_text().startswith("Paired differences")


def test_targets_follow_the_issue_thresholds():
    rows = [_row("pointnet2", s, 0.80 + 0.01 * s, 0.9) for s in range(3)]
    rows += [_row("full_attention", s, 0.60 + 0.01 * s, 0.7) for s in range(3)]
    rows += [_row("centroid", s, 0.82 + 0.01 * s, 0.8) for s in range(3)]
    lines = learning.targets(rows)
    assert "best baseline (pointnet2, by validation) between 70 and 92 %: **met** (81.0 %)" in lines[0]
    assert "**met** (22.0 vs 3 × 1.0 points)" in lines[1]
    assert "centroid ≥ PointNet++ on the mean test accuracy: **met** (83.0 vs 81.0 %" in lines[2]
    saturated = [{**r, "test_acc": 0.99} for r in rows]
    assert all("**not met**" in line for line in learning.targets(saturated)[:2])
    assert learning.targets(rows[:1]) == ["- Learning: fewer than two rows with two seeds each: no verdict."]


def test_a_variant_row_is_its_base_file_and_overrides():
    assert learning.row_config("centroid") == ["--config", "configs/learning/centroid.yaml"]
    assert learning.row_config("centroid_t2") == ["--config", "configs/learning/centroid.yaml",
                                                  "--model.init_args.backbone.init_args.stage.steps", "2"]
    learning.check_rows(["centroid_t2", "pointnet2"])
    with pytest.raises(SystemExit, match="no_such.yaml: no such row config"):
        learning.check_rows(["no_such"])
