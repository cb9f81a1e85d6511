"""Every command fails with one line naming the file and the problem, exit status 1 (``--verbose``: traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from app import cli, visualize
from app.checkpoint import CheckpointError, check_fits, load_task
from app.errors import one_line
from tests.app.conftest import DEMO_SEG, REPO, tiny_args

SHORT_PLY = ("ply\nformat ascii 1.0\nelement vertex 100\nproperty float x\nproperty float y\nproperty float z\n"
             "end_header\n0 0 0\n1 1 1\n")


def _fails(capsys: pytest.CaptureFixture[str], main, argv: list[str]) -> str:
    """Run ``main(argv)`` expecting exit status 1 and exactly one stderr line, which is returned."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1, err
    assert len(err.splitlines()) == 1, err
    return err


def _predict(trained: tuple[Path, list[str]], files: list[Path]) -> list[str]:
    ckpt, args = trained
    return ["predict", *args, "--ckpt_path", str(ckpt),
            "--data.init_args.predict_files", json.dumps([str(f) for f in files])]


def test_predict_on_a_truncated_ply_says_truncated(trained, tmp_path, capsys) -> None:
    bad = tmp_path / "short.ply"
    bad.write_text(SHORT_PLY)
    err = _fails(capsys, cli.main, _predict(trained, [bad]))
    assert err.startswith(f"error: {bad}: truncated: element 'vertex': row 2: early end-of-file")


def test_predict_runs_on_every_cloud_of_an_h5_file(trained, tmp_path, in_tmp) -> None:
    clouds = tmp_path / "four.h5"
    with h5py.File(clouds, "w") as f:
        f["data"] = np.random.default_rng(0).normal(size=(4, 300, 3)).astype(np.float32)
    cli.main(_predict(trained, [clouds]))
    (result,) = in_tmp.rglob("predictions*.json")
    assert [row["input"] for row in json.loads(result.read_text())] == [f"{clouds}[{i}]" for i in range(4)]


class _NotPlainData:
    """Any class: torch.save pickles it, and a weights-only load refuses it."""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"state_dict": {}, "payload": _NotPlainData()}, "refused: it holds pickled Python objects"),
        ({"state_dict": {"w": torch.zeros(2)}}, "not a checkpoint of this application"),
        (None, "not a readable PyTorch checkpoint"),
    ],
    ids=["pickled", "foreign", "garbage"],
)
def test_bad_checkpoints_are_refused_by_name(trained, tmp_path, capsys, content, problem) -> None:
    ckpt = tmp_path / "other.ckpt"
    if content is None:
        ckpt.write_text("not a checkpoint")
    else:
        torch.save(content, ckpt)
    for main, argv in ((cli.main, ["test", *trained[1], "--ckpt_path", str(ckpt)]),
                       (visualize.main, ["--ckpt", str(ckpt), "--out", str(tmp_path / "o")])):
        err = _fails(capsys, main, argv)
        assert err.startswith(f"error: {ckpt}: {problem}")
        assert "weights_only" not in err


def test_checkpoint_of_another_task_or_class_count_is_refused(trained, capsys, tmp_path) -> None:
    ckpt, _ = trained
    seg = ["test", "--config", DEMO_SEG, *tiny_args(tmp_path / "seg"), "--ckpt_path", str(ckpt)]
    assert "holds a ClassificationTask, the config builds a SegmentationTask" in _fails(capsys, cli.main, seg)
    task = load_task(ckpt)
    task.hparams["num_classes"] = 5  # a data set with 5 classes
    with pytest.raises(CheckpointError, match=r"trained with num_classes=12, the data at hand has 5"):
        check_fits(ckpt, task)


def test_missing_data_folder_is_one_line(capsys, in_tmp) -> None:
    argv = ["fit", "--config", str(REPO / "configs/demo.yaml"), "--data.init_args.format", "auto",
            "--data.init_args.root", "no/such/folder", "--trainer.logger", "false"]
    err = _fails(capsys, cli.main, argv)
    assert err.startswith("error: no/such/folder: ")


def test_verbose_keeps_the_traceback(trained, tmp_path) -> None:
    bad = tmp_path / "short.ply"
    bad.write_text(SHORT_PLY)
    with pytest.raises(Exception, match="truncated"):
        cli.main([*_predict(trained, [bad]), "--verbose"])


def test_worker_errors_are_unwrapped() -> None:
    """An error re-raised from a DataLoader worker carries the worker traceback; the one line is its last line."""
    wrapped = RuntimeError("Caught DataFormatError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File ...\ndatamodules.errors.DataFormatError: a.ply: truncated: row 2")
    assert one_line(wrapped) == "a.ply: truncated: row 2"


@pytest.mark.slow
def test_python_m_app_prints_one_line(trained, tmp_path) -> None:
    """The real entry point as a user runs it: one stderr line, exit status 1, no traceback."""
    bad = tmp_path / "short.ply"
    bad.write_text(SHORT_PLY)
    run = subprocess.run([sys.executable, "-m", "app", *_predict(trained, [bad])], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env={"PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "PATH": ""})
    assert run.returncode == 1
    lines = [line for line in run.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert lines == [f"error: {bad}: truncated: element 'vertex': row 2: early end-of-file  (traceback: add --verbose)"]


def test_checkpoint_with_flat_stage_settings_is_refused_in_one_line(trained, capsys, tmp_path) -> None:
    ckpt = torch.load(trained[0], map_location="cpu", weights_only=True)
    init = ckpt["hyper_parameters"]["backbone"]["init_args"]
    init.update(init.pop("stage"))  # the layout before the settings moved under `stage:`
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    err = _fails(capsys, cli.main, ["test", *trained[1], "--ckpt_path", str(old)])
    assert err.startswith(f"error: {old}: written by an older version: its backbone takes the per-stage settings")
    assert err.count("\n") <= 1
