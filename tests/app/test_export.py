"""``python -m app export``: written files match the eager model; one-line errors (app/export.py)."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest
import torch

from app.checkpoint import load_task
from app.cli import make_cli
from app.export import example_inputs, export, load_deployable, main, parity_inputs, runner
from models.backbone import KNNInit
from models.export_fps import farthest_point_order, unrolled_farthest_point_sample
from models.ops import farthest_point_sample
from tests.app.conftest import DEMO_SEG, tiny_args

#: The ONNX path needs the pure-torch ("gathered") per-pair kernels of the backbone's ``kernel`` option.
HAS_KERNEL_OPTION = "kernel" in inspect.signature(KNNInit).parameters


@pytest.fixture(scope="module")
def trained_seg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch tiny part-segmentation run's ``last.ckpt``."""
    root = tmp_path_factory.mktemp("export_seg")
    args = ["--config", DEMO_SEG, *tiny_args(root / "data", epochs=1), "--trainer.default_root_dir", str(root / "runs"),
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            f"--trainer.callbacks.dirpath={root / 'ckpt'}", "--trainer.callbacks.save_last=true"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_cli(["fit", *args])
    finally:
        os.chdir(cwd)
    return root / "ckpt" / "last.ckpt"


def test_unrolled_fps_matches_the_operator_and_the_reference() -> None:
    pos = torch.randn(3, 200, 3, generator=torch.Generator().manual_seed(0))
    got = unrolled_farthest_point_sample(pos, 50)
    assert got.dtype == torch.long and got.shape == (3, 50)
    assert torch.equal(got, farthest_point_sample(pos, 50))
    assert torch.equal(got, farthest_point_sample(pos, 50, method="exact"))


def test_unrolled_fps_ties_go_to_the_lower_index_as_the_reference() -> None:
    grid = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"), -1).reshape(1, 64, 3)  # many ties
    assert torch.equal(unrolled_farthest_point_sample(grid, 20), farthest_point_sample(grid, 20, method="exact"))


def test_farthest_point_order_is_a_permutation_with_the_picks_first() -> None:
    pos = torch.randn(2, 64, 3, generator=torch.Generator().manual_seed(1))
    order = farthest_point_order(pos, 16)
    assert torch.equal(order.sort(-1).values, torch.arange(64).expand(2, 64))
    assert torch.equal(order[:, :16], farthest_point_sample(pos, 16))


def test_deployable_matches_the_task_in_any_point_order(trained: tuple[Path, list[str]]) -> None:
    ckpt, _ = trained
    task, model = load_task(ckpt).eval(), load_deployable(ckpt)
    inputs = example_inputs(model, 4, 128)  # pos and normals
    shuffled = tuple(t[:, torch.randperm(128, generator=torch.Generator().manual_seed(3))] for t in inputs)
    with torch.no_grad():
        expected = task(*inputs)
        assert torch.allclose(model(*inputs), expected, atol=1e-5)
        assert torch.allclose(model(*shuffled), expected, atol=1e-5)


@pytest.mark.slow
def test_exported_program_classification_checked_and_timed(trained: tuple[Path, list[str]], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI writes, checks and times (``--time --json``); the file runs at another batch size than traced."""
    ckpt, _ = trained
    out, record = tmp_path / "model.pt2", tmp_path / "export.json"
    main(["--ckpt", str(ckpt), "--format", "exported-program", "--out", str(out), "--time", "--batches", "1", "3",
          "--repeats", "2", "--json", str(record)])
    written = json.loads(record.read_text())
    parity = written["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["same_predictions"] and parity["clouds"] == 32
    assert written["num_points"] == 128 and written["export_s"] > 0 and written["file_mib"] > 0
    assert [t["batch"] for t in written["timings"]] == [1, 3]
    assert all(len(t["file_ms"]) == len(t["eager_ms"]) == 2 and min(t["file_ms"] + t["eager_ms"]) > 0
               for t in written["timings"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| exported-program |")]
    assert len(table) == 2 and table[1].startswith("| exported-program | 128 | 3 |")
    model = load_deployable(ckpt)
    inputs = example_inputs(model, 5, 128)  # another batch size than the 32 it was traced with
    with torch.no_grad():
        assert torch.allclose(runner("exported-program", out, model)(inputs), model(*inputs), atol=1e-4)


@pytest.mark.slow
def test_exported_program_segmentation(trained_seg: Path, tmp_path: Path) -> None:
    parity = export(trained_seg, "exported-program", tmp_path / "seg.pt2").parity
    assert parity.max_abs_diff <= 1e-4 and parity.same_predictions


@pytest.mark.slow
@pytest.mark.skipif(not HAS_KERNEL_OPTION, reason="needs the backbone's kernel option (pure-torch 'gathered' kernels)")
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_onnx_matches_eager_in_onnxruntime(task: str, trained: tuple[Path, list[str]], trained_seg: Path,
                                           tmp_path: Path) -> None:
    ckpt = trained[0] if task == "classification" else trained_seg
    out = tmp_path / "model.onnx"
    parity = export(ckpt, "onnx", out).parity
    assert parity.max_abs_diff <= 1e-4 and parity.same_predictions
    model = load_deployable(ckpt)
    inputs = tuple(t[:1] for t in parity_inputs(ckpt, model))
    with torch.no_grad():  # batch 1: the batch size is dynamic
        assert torch.allclose(runner("onnx", out, model)(inputs), model(*inputs), atol=1e-4, equal_nan=True)


def test_unknown_format_is_one_line(trained: tuple[Path, list[str]], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--ckpt", str(trained[0]), "--format", "tflite", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown export format 'tflite'" in err


def test_foreign_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, foreign)
    with pytest.raises(SystemExit):
        main(["--ckpt", str(foreign), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "foreign.ckpt: not a checkpoint of this application" in err
