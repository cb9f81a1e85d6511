"""The ``fit`` benchmark: its timer callback inside a real CLI run, its command line, and its report."""

from __future__ import annotations

import json
from pathlib import Path

from app.cli import make_cli
from benchmarks.fit import fit_command, render_fit
from benchmarks.runner import provenance
from tests.app.conftest import DEMO, tiny_args


def test_fit_timer_measures_a_cli_fit(in_tmp: Path, gen_cls_root: Path) -> None:
    out = in_tmp / "fit.json"
    make_cli(["fit", "--config", DEMO, *tiny_args(gen_cls_root, epochs=2),
              "--trainer.callbacks+=benchmarks.fit_timer.FitTimer", f"--trainer.callbacks.output={out}"])
    epochs = json.loads(out.read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    for e in epochs:
        assert e["samples"] == 144  # 12 classes × 12 training shapes, batch 16: 9 full batches (drop_last)
        assert 0 < e["wait_s"] < e["train_s"] < e["epoch_s"]  # validation runs after the training batches
        assert abs(e["samples_per_s"] - e["samples"] / e["train_s"]) < 1e-6 and e["gpu_busy_frac"] is None
    record = {"command": "python -m app fit ...", "epochs": epochs, **provenance()}
    report = "\n".join(render_fit(record, "##"))
    assert "| 0 | 144 |" in report and "| 1 | 144 |" in report and f"Measured at {record['commit']}" in report
    assert "Dropped as stale" in "\n".join(render_fit({**record, "commit": "0000000"}, "##"))


def test_fit_command_is_the_paper_config_on_modelnet40_sized_data(tmp_path: Path) -> None:
    cmd = fit_command("cuda", "data/x", tmp_path / "fit.json", tmp_path / "runs", 1, 50, 4)
    line = " ".join(cmd)
    assert "--config configs/modelnet40.yaml --config configs/trainer/gpu_bf16.yaml" in line
    assert "--data.init_args.generator.train_per_class 820" in line and "--trainer.limit_train_batches 50" in line
    assert "gpu_bf16" not in " ".join(fit_command("cpu", "data/x", tmp_path / "f.json", tmp_path, 1, None, None))
