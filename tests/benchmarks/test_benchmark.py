"""The benchmark command end to end on tiny sizes, and the baselines' contracts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.config import Config
from benchmarks.experiments import VARIANTS
from benchmarks.harness import MODELS, build_classifier, loglog_slope, num_centroids, tensor_peak_mib
from benchmarks.verdicts import speed_verdict, targets

#: The task of made-up learning rows (the learning part takes hours: tests write its rows).
TASK = {"train_per_class": 20, "test_per_class": 15}


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


def _learning(*models: tuple[str, float, float], seeds: int = 3) -> dict:
    """Made-up results of the learning part: ``(model, test accuracy, training samples/s)`` per row, seed s adding
    s points of test accuracy."""
    return {"output": "benchmarks/results/learning.json", "rows": [
        {"model": model, "seed": s, "test_acc": acc + 0.01 * s, "val_acc": acc, "train_samples_per_s": sps,
         "infer_samples_per_s": 10 * sps, "params": 1000, "commit": "abc1234", "machine": "some CPU", "task": TASK}
        for model, acc, sps in models for s in range(seeds)]}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick run of every default part (cost, ops), shared by the tests that read or re-render it."""
    out = tmp_path_factory.mktemp("quick") / "BENCHMARKS.md"
    main(["--quick", "--output", str(out), "--threads", "1"])
    return out


def _copy_run(run: Path, out: Path) -> Path:
    """The quick run's report and raw results copied to ``out`` (and ``out.json``), for a test to change."""
    shutil.copy(run, out)
    shutil.copy(run.with_suffix(".json"), out.with_suffix(".json"))
    return out


def test_quick_run_writes_well_formed_markdown(quick_run: Path) -> None:
    out = quick_run
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    for heading in ("## Cost against N", "## Centroid backbone variants", "## Growth of fwd+bwd time",
                    "## Neighbour search", "## aten operators dispatched", "## Targets"):
        assert heading in text
    assert "Equal-budget" not in text and "Learning on the hard task" not in text  # learning: only when asked for
    tables = _tables(text)
    assert len(tables) == 5  # cost, variants, slopes, ops, dispatched aten ops
    for table in tables:
        widths = {line.count("|") for line in table}
        assert len(widths) == 1, table  # every row has the header's number of cells
        assert re.fullmatch(r"\|(-+:?\|)+|\|(---:?\|)+", table[1].replace("---:", "---")), table[1]
    cost = tables[0]
    for label, _ in MODELS.values():
        assert any(f"| {label} |" in row for row in cost[2:]), label
    assert out.resolve() != Path(__file__).resolve().parents[2] / "BENCHMARKS.md"
    measured = [row for row in cost[2:] if "| – |" not in row]
    assert measured and all(re.search(r"tensors \d+ MiB", row) for row in measured)  # CPU: the tensors' peak too
    variants = tables[1]
    # every variant, and its baselines at the same schedule
    for variant, baselines in ((label, v.baselines) for label, v in VARIANTS.items()):
        assert any(f"| Centroid (local), {variant} |" in row for row in variants), variant
        for model in baselines:
            assert any(f"| {MODELS[model][0]}, {variant} |" in row for row in variants), (model, variant)
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["parts"] == ["cost", "ops"] and set(raw["commands"]) == set(raw["configs"]) == {"cost", "ops"}


def test_tensor_peak_counts_the_live_tensors_at_their_high_water_mark() -> None:
    def step() -> None:
        a = torch.ones(16, 2**20)  # 64 MiB
        b = torch.ones(8, 2**20)  # 32 MiB more while a lives
        del a, b
        torch.ones(32, 2**20)  # 128 MiB after both were freed: the peak

    kept = torch.ones(64, 2**20)  # live before the step: not counted
    assert 128 <= tensor_peak_mib(step) < 129
    del kept


def test_the_memory_target_needs_both_measured_ratios_within_half() -> None:
    """N = 4096 against full attention: resident and tensor peaks must both be ≤ ½; a cell without a tensor peak
    (measured before it existed) is judged on its resident peak alone."""
    def line(centroid: dict, full: dict) -> str:
        models = {"centroid_local": {4096: {"train_ms": 100.0, **centroid}},
                  "full_attention": {4096: {"train_ms": 500.0, **full}}}
        return targets(models, {}, Config())[0]

    both = {"peak_mib": 1000.0, "tensor_peak_mib": 1000.0}
    assert ("**met** (5.00× (one timing: no spread) faster, 0.40× its peak resident memory and 0.30× its tensors' "
            "peak)") in line({"peak_mib": 400.0, "tensor_peak_mib": 300.0}, both)
    assert "**not met**" in line({"peak_mib": 400.0, "tensor_peak_mib": 600.0}, both)
    assert "**met** (5.00× (one timing: no spread) faster, 0.40× its peak resident memory)" in line(
        {"peak_mib": 400.0}, {"peak_mib": 1000.0})


def test_a_speed_verdict_is_met_only_across_the_spread() -> None:
    """The ratio of medians clearing the goal is not enough: the slowest run against the fastest must too."""
    slow = {"train_ms": 500.0, "train_range_ms": [480.0, 520.0]}
    assert speed_verdict(slow, {"train_ms": 100.0, "train_range_ms": [95.0, 110.0]}, 4.0)[0] == "met"  # 4.36×
    noisy = speed_verdict(slow, {"train_ms": 120.0, "train_range_ms": [110.0, 130.0]}, 4.0)  # 4.17×, worst 3.69×
    assert noisy == ("within noise", "4.17× (worst pair of runs 3.69×)")
    assert speed_verdict(slow, {"train_ms": 130.0, "train_range_ms": [125.0, 135.0]}, 4.0)[0] == "not met"


def test_a_part_can_be_rerun_keeping_the_others(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    main(["--quick", "--output", str(out), "--threads", "1", "--parts", "ops"])
    raw = json.loads(out.with_suffix(".json").read_text())
    raw["learning"] = _learning(("centroid", 0.5, 20.0), seeds=2)
    raw["parts"].append("learning")
    raw["commands"]["learning"] = ["python -m benchmarks --parts learning"]
    out.with_suffix(".json").write_text(json.dumps(raw))
    main(["--quick", "--output", str(out), "--threads", "1", "--parts", "ops"])
    text = out.read_text()
    assert "| centroid | 2 | 50.0 | 50.5 ± 0.7 |" in text and "## Cost against N" in text and "fps_order_data" in text
    assert "- learning: `python -m benchmarks --parts learning`" in text


def test_results_of_the_removed_train_part_are_ignored_and_dropped(quick_run: Path, tmp_path: Path) -> None:
    """A results file from before the ``train`` part was removed (its rows, commands, config and machine, and its
    config fields in every part's config) re-renders without it, and a rewrite drops it from the file."""
    out = _copy_run(quick_run, tmp_path / "BENCHMARKS.md")
    text = out.read_text()
    raw = json.loads(out.with_suffix(".json").read_text())
    old_fields = {"candidates": ["PointNet++ SSG"], "seeds": 3, "train_epochs": 10, "train_points": 256,
                  "train_per_class": 40, "test_per_class": 50, "data_root": "/tmp/bdata12"}
    for part in ("cost", "ops"):
        raw["configs"][part].update(old_fields)
    raw["configs"]["train"] = {**raw["configs"]["cost"]}
    raw["train"] = {"PointNet++ SSG": [{"test_acc": 0.9, "train_s": 1.0, "curve": [1.0], "commit": "abc1234"}]}
    raw["parts"] = ["cost", "ops", "train"]
    raw["commands"]["train"] = ["python -m benchmarks --parts train --candidates 'PointNet++ SSG'"]
    raw["machines"]["train"] = "an older machine"
    out.with_suffix(".json").write_text(json.dumps(raw))
    from benchmarks.report import render

    rendered = render(Config(), raw, "python -m benchmarks --parts")
    assert "Equal-budget" not in rendered and "--candidates" not in rendered and "an older machine" not in rendered
    main(["--quick", "--output", str(out), "--parts"])  # re-render only: the file is rewritten without the part
    assert out.read_text() == text
    raw = json.loads(out.with_suffix(".json").read_text())
    assert "train" not in raw and raw["parts"] == ["cost", "ops"]
    assert all("train" not in raw[key] for key in ("commands", "configs", "machines"))
    assert not any(old_fields.keys() & config.keys() for config in raw["configs"].values())
    assert rendered.strip() == text.split("## Plots")[0].strip()  # the report ignored the part before the rewrite


def test_a_gpu_run_is_kept_apart_and_rendered_with_its_own_machine_and_targets(quick_run: Path, tmp_path: Path) -> None:
    """A ``--device cuda`` run stores its cells under "gpu" and renders below the CPU run, never mixed into it.
    (Its results are made up here from the CPU cells: no GPU in CI.)"""
    out = _copy_run(quick_run, tmp_path / "BENCHMARKS.md")
    raw = json.loads(out.with_suffix(".json").read_text())
    cpu_text = out.read_text()
    gpu = json.loads(json.dumps({k: raw[k] for k in ("cost", "configs", "parts", "commands")}))
    gpu["configs"]["cost"].update(device="cuda", batch=128, sizes=[1024])
    gpu["machines"] = {"cost": "Some CPU, 16 cores, torch 2.11.0+cu130, GPU: NVIDIA H200"}
    gpu["cost"]["models"] = {name: {"1024": {**cells[next(iter(cells))], "kernel_frac": frac}}
                             for (name, cells), frac in zip(raw["cost"]["models"].items(), (0.9, 0.5, 0.4, 0.3, 0.2))}
    raw["gpu"] = gpu
    out.with_suffix(".json").write_text(json.dumps(raw))
    main(["--quick", "--output", str(out), "--parts"])  # re-render only
    text = out.read_text()
    cpu, _, gpu_text = text.partition("\n## GPU run\n")
    assert cpu.strip() == cpu_text.strip()  # the CPU report is untouched
    assert "### Cost against N" in gpu_text and "GPU: NVIDIA H200" in gpu_text and "(bf16 autocast)" in gpu_text
    assert "| Centroid (local) | 1024 |" in gpu_text and "GPU busy 90 %" in gpu_text
    assert "kernel time ≥ 80 % of the step's wall time: **met** (GPU busy 90 %" in gpu_text
    assert "batch 128: training samples/s ≥ 2× full attention" in gpu_text
    assert "largest B·M (batch × first-stage centroids) run here 65,536; failed cells: none" in gpu_text


@pytest.mark.parametrize("name", list(MODELS))
def test_benchmark_models_share_the_contract(name: str) -> None:
    model = build_classifier(name, 64, num_classes=5)
    pos = torch.rand(2, 64, 3)
    logits = model(pos)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.backbone.out_channels == (1024 if name == "pointnet2_ball" else 512)


def test_loglog_slope_and_schedule() -> None:
    assert loglog_slope([1000, 2000, 4000], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    assert loglog_slope([1000], [1.0]) is None
    assert num_centroids(1024) == [512, 256, 128]
    assert num_centroids(1024, [4, 8, 16]) == [256, 128, 64]


def test_full_attention_has_the_centroid_blocks_layer_scale() -> None:
    scaled = build_classifier("full_attention", 64, num_classes=5)
    plain = build_classifier("full_attention", 64, num_classes=5, options={"layer_scale": None})
    for block in (stage.attention for stage in scaled.backbone.stages):
        assert torch.all(block.gamma_attn == 1e-3) and torch.all(block.gamma_ffn == 1e-3)
    assert all(stage.attention.gamma_attn is None for stage in plain.backbone.stages)


def test_pointnet2_norm_option() -> None:
    model = build_classifier("pointnet2", 64, num_classes=5, options={"norm": "batch"})
    assert isinstance(model.backbone.stages[0].conv.local_nn[1], torch.nn.BatchNorm1d)
    assert model(torch.rand(2, 64, 3)).shape == (2, 5)
    with pytest.raises(ValueError, match="norm='group'"):
        build_classifier("pointnet2", 64, num_classes=5, options={"norm": "group"})


def test_compiled_cells_are_kept_as_a_variant_beside_the_eager_ones(monkeypatch) -> None:
    import benchmarks.runner as bench

    monkeypatch.setattr(bench, "sweep", lambda names, *a, **k: {n: {128: {"train_ms": 1.0}} for n in names})
    cfg = bench.Config(sizes=[128], local_sizes=[], models=["centroid_local", "pointnet2"], compile=True)
    assert bench.run_cost(cfg) == {"models": {}, "variants": {bench.COMPILED: {128: {"train_ms": 1.0}},
                                                              f"pointnet2@{bench.COMPILED}": {128: {"train_ms": 1.0}}}}


def test_only_the_variants_asked_for_are_measured_with_their_baselines_own_options(monkeypatch) -> None:
    """``--variants``: the other variants are not run; each baseline of a variant gets its own backbone options;
    a variant label no longer in ``VARIANTS`` (changed settings) is dropped from older results."""
    import benchmarks.runner as bench
    from benchmarks.config import forget_removed_parts

    calls = []

    def fake_sweep(names, sizes_of, cfg, key, ratios=(2, 4, 8), steps=2, options=None, widths=None):
        calls.append((tuple(names), steps, options))
        return {n: {1024: {"train_ms": 1.0}} for n in names}

    monkeypatch.setattr(bench, "sweep", fake_sweep)
    label = next(label for label in VARIANTS if label.startswith("the configs' stage settings"))
    cfg = bench.Config(sizes=[], local_sizes=[], variants=[label],
                       models=["centroid_local", "full_attention", "pointnet2"])
    out = bench.run_cost(cfg)
    assert set(out["variants"]) == {label, f"full_attention@{label}", f"pointnet2@{label}"}
    assert calls[1:] == [(("centroid_local",), 1, {"init_layers": 2, "ffn_ratio": 0}),
                         (("full_attention",), 1, {"pool_layers": 2, "ffn_ratio": 0}), (("pointnet2",), 1, {})]
    old = {"cost": {"models": {}, "variants": {**out["variants"], "an old label": {}, "pointnet2@an old label": {}}}}
    assert set(forget_removed_parts(old)["cost"]["variants"]) == set(out["variants"])


def test_sweep_runs_every_model_at_one_size_before_the_next_and_skips_past_a_failure(monkeypatch) -> None:
    """Size-major order (the cells a ratio compares run back to back); a model stops at its first failure."""
    import benchmarks.runner as bench

    calls = []

    def fake_child(payload: dict, cfg, python=None) -> dict:
        calls.append((payload["name"], payload["num_points"]))
        failed = payload["name"] == "pointnet2" and payload["num_points"] == 256
        return {"error": "out of memory"} if failed else {"train_ms": payload["num_points"] / 100}

    monkeypatch.setattr(bench, "run_child", fake_child)
    cfg = bench.Config(cell_timeout_s=1e6)
    sizes = {"centroid_local": [128, 256, 512, 1024], "pointnet2": [128, 256, 512]}
    out = bench.sweep(["centroid_local", "pointnet2"], sizes, cfg, "train_ms")
    assert calls == [("centroid_local", 128), ("pointnet2", 128), ("centroid_local", 256), ("pointnet2", 256),
                     ("centroid_local", 512), ("centroid_local", 1024)]
    assert list(out["centroid_local"]) == [128, 256, 512, 1024] and out["centroid_local"][1024]["train_ms"] == 10.24
    assert out["pointnet2"][512] == {"error": "skipped: N=256 failed (out of memory)"}


def test_cells_older_than_their_models_code_are_dropped() -> None:
    import subprocess

    from benchmarks.runner import REPO, drop_stale, is_stale, last_change

    changed = last_change("dgcnn")
    before = subprocess.run(["git", "rev-parse", "--short", f"{changed}^"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    assert is_stale({"commit": before}, changed) and is_stale({}, changed) and is_stale({"commit": "0000000"}, changed)
    assert not is_stale({"commit": head + "+dirty"}, changed)
    kept, dropped = drop_stale({"dgcnn": {1024: {"commit": before, "train_ms": 1.0}, 2048: {"commit": head}}})
    assert list(kept["dgcnn"]) == [2048]
    assert dropped == [f"dgcnn: N = 1024 (measured at {before}; code changed at {changed})"]


def test_the_quick_run_draws_its_plots_beside_the_report(quick_run: Path, tmp_path: Path) -> None:
    out = _copy_run(quick_run, tmp_path / "B.md")
    raw = json.loads(out.with_suffix(".json").read_text())
    raw["learning"] = _learning(("centroid", 0.5, 20.0), ("pointnet2", 0.4, 10.0), seeds=2)
    out.with_suffix(".json").write_text(json.dumps(raw))
    main(["--quick", "--output", str(out), "--parts"])  # re-render only: the plots are redrawn from the raw results
    text = out.read_text()
    for name in ("B_cost.png", "B_accuracy.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG") and f"![{name}]({name})" in text


def test_accuracy_rows_intervals_and_the_pareto_front() -> None:
    from benchmarks.plots import ci95, learning_rows, pareto_front

    assert ci95([1.0]) == 0.0 and ci95([1.0, 3.0]) == pytest.approx(12.71 * 2**0.5 / 2**0.5)
    assert pareto_front([(1.0, 90.0), (2.0, 80.0), (0.5, 85.0), (2.0, 70.0)]) == [0, 1]
    rows = learning_rows({"learning": _learning(("centroid", 0.5, 60.0), seeds=2)})
    assert len(rows) == 1 and rows[0].label == "centroid" and rows[0].acc_mean == pytest.approx(50.5)
    assert rows[0].acc_ci95 == pytest.approx(12.71 * 0.5 ** 0.5 / 2 ** 0.5)
    assert rows[0].train_sps == pytest.approx(60.0) and rows[0].infer_sps == pytest.approx(600.0)
    assert learning_rows({}) == []


def test_the_learning_part_renders_its_table_targets_and_accuracy_plot(quick_run: Path, tmp_path: Path) -> None:
    """The learning rows (here made up: the part takes hours) give the training table, its targets and the accuracy
    plot's points (mean test accuracy against samples/s)."""
    out = _copy_run(quick_run, tmp_path / "L.md")
    raw = json.loads(out.with_suffix(".json").read_text())
    raw["learning"] = _learning(("centroid", 0.85, 20.0), ("pointnet2", 0.80, 30.0))
    out.with_suffix(".json").write_text(json.dumps(raw))
    main(["--quick", "--output", str(out), "--parts"])  # re-render only
    text = out.read_text()
    assert "## Learning on the hard task" in text and "20 training shapes per class" in text
    assert "| centroid | 3 | 85.0 | 86.0 ± 1.0 |" in text and "Rows measured at abc1234 (some CPU)" in text
    assert "centroid ≥ PointNet++ on the mean test accuracy: **met** (86.0 vs 81.0 %" in text
    assert (tmp_path / "L_accuracy.png").read_bytes().startswith(b"\x89PNG")



def test_the_dispatch_count_is_reported_with_the_target_at_its_size(quick_run: Path) -> None:
    from benchmarks.dispatch import render_dispatch

    raw = json.loads(quick_run.with_suffix(".json").read_text())
    d = raw["dispatch"]
    assert d["forward"] > d["forward_views"] > 0 and d["backward"] > d["backward_views"] > 0
    assert "aten operators dispatched by one training step" in quick_run.read_text()
    lines = render_dispatch({**d, "num_points": 1024, "batch": 8, "forward": 1400, "backward": 1600}, "##")
    assert "- forward ≤ 1500 aten ops: **met** (1400)." in lines
    assert "- backward ≤ 1500 aten ops: **not met** (1600)." in lines
