"""benchmarks.deploy: the commands it runs and its section of the report (the export and its timing themselves are
tested through ``python -m app export --time --json`` in tests/app/test_export.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks.deploy import commands, deploy_verdict, render_deploy
from benchmarks.runner import REPO


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()


def test_the_users_commands_fit_at_the_timed_n_then_export_check_and_time(tmp_path: Path) -> None:
    cmds = commands(1024, [1, 16], 7, 4, tmp_path)
    fit = cmds["fit"]
    assert fit[1:4] == ["-m", "app", "fit"] and fit[fit.index("--data.init_args.num_points") + 1] == "1024"
    for fmt in ("onnx", "exported-program"):
        cmd = cmds[fmt]
        assert cmd[1:4] == ["-m", "app", "export"] and cmd[cmd.index("--format") + 1] == fmt
        assert "--time" in cmd and cmd[cmd.index("--batches") + 1: cmd.index("--batches") + 3] == ["1", "16"]
        assert cmd[cmd.index("--ckpt") + 1] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_at_least_as_fast_only_across_the_spread() -> None:
    assert deploy_verdict({"file_ms": [8.0, 9.0, 10.0], "eager_ms": [10.0, 11.0, 12.0]})[0] == "met"
    assert deploy_verdict({"file_ms": [8.0, 9.0, 12.0], "eager_ms": [10.0, 11.0, 12.0]})[0] == "within noise"
    assert deploy_verdict({"file_ms": [20.0, 21.0, 22.0], "eager_ms": [10.0, 11.0, 12.0]})[0] == "not met"


def _record(commit: str) -> dict:
    timing = {"batch": 16, "file_ms": [20.0, 21.0, 22.0], "eager_ms": [10.0, 10.5, 11.0]}
    return {"commands": {"fit": "python -m app fit ...", "onnx": "python -m app export ..."}, "num_points": 1024,
            "commit": commit, "date": "2026-12-03", "machine": "some CPU", "torch": "2.13.0",
            "formats": {"onnx": {"parity": {"max_abs_diff": 4.8e-7, "same_predictions": True, "clouds": 32},
                                 "export_s": 12.0, "file_mib": 7.6, "timings": [timing]},
                        "exported-program": {"error": "exit 1: boom"}}}


def test_the_section_shows_each_format_and_batch_with_its_verdict_and_parity() -> None:
    text = "\n".join(render_deploy(_record(_head()), "##"))
    assert "## Shipped model" in text and "`python -m app fit ...`" in text
    row = next(line for line in text.splitlines() if line.startswith("| ONNX (onnxruntime CPU) | 16 |"))
    assert "| 21.0 (20.0–22.0) | 10.5 (10.0–11.0) | 0.50× | not met (3 calls each) |" in row
    assert "max abs Δ 4.8e-07, same predictions: True" in row and "12 s, 7.6 MiB" in row
    assert "| exported program (torch.export.load) | – | – | – | – | failed: exit 1: boom |" in text


def test_a_record_older_than_the_export_code_is_dropped() -> None:
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "--abbrev-commit", "HEAD"], cwd=REPO,
                           capture_output=True, text=True).stdout.split()[0]
    text = "\n".join(render_deploy(_record(first), "##"))
    assert "Dropped as stale" in text and "| ONNX" not in text
