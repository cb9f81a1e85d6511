"""End-to-end CLI runs on tiny generated data: every config parses, fit → test → predict, exact resume,
checkpoints that rebuild themselves (weights_only), W&B offline, and learning well above chance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import open3d as o3d
import pytest
import torch
import wandb
from lightning.pytorch import Callback, LightningModule, Trainer

from app.checkpoint import load_task
from app.cli import build_from_config, make_cli
from tests.app.conftest import DEMO, DEMO_SEG, REPO, tiny_args

EXPERIMENT_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml"))


def _print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: p.name)
def test_print_config_round_trips(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An experiment composes its concern files; the printed, fully resolved config reproduces itself."""
    printed = _print_config(["--config", str(config)], capsys)
    assert "class_path: app.tasks." in printed and "class_path: models.backbone.CentroidBackbone" in printed
    assert "sync_batchnorm: false" in printed  # no BatchNorm anywhere (docs/operator.md §4)
    (tmp_path / "resolved.yaml").write_text(printed)
    assert _print_config(["--config", str(tmp_path / "resolved.yaml")], capsys) == printed


def test_experiment_files_are_small_and_name_their_command() -> None:
    """Experiments only compose concern files and set a few values; each header has its exact command."""
    for config in EXPERIMENT_CONFIGS:
        lines = config.read_text().splitlines()
        body = [line for line in lines if line.strip() and not line.startswith("#")]
        assert len(body) <= 10, f"{config.name}: {len(body)} lines; move shared settings into a concern file"
        assert any(line.startswith(f"#   python -m app fit  --config configs/{config.name}") for line in lines)


@pytest.mark.parametrize("config", EXPERIMENT_CONFIGS, ids=lambda p: p.name)
def test_every_config_instantiates(config: Path, in_tmp: Path) -> None:
    """Model and data build from each config without touching data (real-data roots may be absent)."""
    task, data = build_from_config(str(config))
    assert task.backbone.in_channels == data.in_channels
    logits_dim = getattr(task, "num_classes", None) or task.hparams["num_parts"]
    assert logits_dim == (getattr(data, "num_classes", None) or data.num_parts)


def _last_metrics(run_root: Path) -> dict:
    files = sorted(run_root.rglob("test_metrics*.json"), key=lambda p: p.stat().st_mtime)
    assert files, f"no test_metrics.json below {run_root}"
    return json.loads(files[-1].read_text())


def test_fit_test_predict_classification(in_tmp: Path, gen_cls_root: Path) -> None:
    make_cli(["fit", "--config", DEMO, *tiny_args(gen_cls_root)])
    ckpt = in_tmp / "runs/demo/checkpoints/last.ckpt"
    assert ckpt.is_file() and any((in_tmp / "runs/demo/checkpoints").glob("best-*.ckpt"))

    make_cli(["test", "--config", DEMO, *tiny_args(gen_cls_root), "--ckpt_path", str(ckpt)])
    result = _last_metrics(in_tmp / "runs")
    assert {"test/acc", "test/macc", "test/loss"} <= set(result["metrics"])
    num_classes = len(result["names"])
    assert len(result["details"]["confusion"]) == num_classes
    assert sum(map(sum, result["details"]["confusion"])) == result["num_samples"]

    # predict on user files of every kind: one results file, every input named, probabilities summing to 1
    files = _user_files(in_tmp / "inputs")
    make_cli(["predict", "--config", DEMO, *tiny_args(gen_cls_root), "--ckpt_path", str(ckpt),
              "--data.init_args.predict_files", json.dumps([str(f) for f in files])])
    (result_file,) = (in_tmp / "runs").rglob("predictions.json")
    rows = json.loads(result_file.read_text())
    assert [r["input"] for r in rows] == [str(f) for f in files]
    for row in rows:
        assert row["class"] in result["names"] and sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    # a checkpoint rebuilds its own model with nothing else at hand (weights_only load)
    task = load_task(str(ckpt)).eval()
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(v, task.state_dict()[k]) for k, v in state.items())
    pos = torch.randn(2, 128, 3)
    with torch.no_grad():
        assert task(pos, torch.nn.functional.normalize(pos, dim=-1)).shape == (2, num_classes)


def _user_files(folder: Path) -> list[Path]:
    """A small cloud in each user format the ``predict`` command accepts (.off .ply .txt .npy .h5)."""
    from app.render import write_ply

    folder.mkdir()
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(300, 3)).astype(np.float32)
    np.save(folder / "cloud.npy", pos)
    np.savetxt(folder / "cloud.txt", np.hstack([pos, pos / np.linalg.norm(pos, axis=1, keepdims=True)]), delimiter=",")
    write_ply(folder / "cloud.ply", pos)
    with h5py.File(folder / "cloud.h5", "w") as f:
        f["data"] = pos[None]
    cube = "OFF\n8 6 0\n" + "".join(f"{x} {y} {z}\n" for x in (0, 1) for y in (0, 1) for z in (0, 1))
    cube += "4 0 1 3 2\n4 4 6 7 5\n4 0 4 5 1\n4 2 3 7 6\n4 0 2 6 4\n4 1 5 7 3\n"
    (folder / "cube.off").write_text(cube)
    return sorted(folder.iterdir())


class _Crash(Callback):
    """Simulates a killed run: raises at the second batch of epoch ``at`` (``last.ckpt`` holds the epoch before)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == self.at and batch_idx == 1:
            raise RuntimeError("simulated crash")


class _StartEpoch(Callback):
    """Records the epoch a ``fit`` starts at (a resumed run starts at the killed epoch, not at 0)."""

    epoch: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epoch = trainer.current_epoch


def _fit(args: list[str], ckpt_path: str | None = None, *extra: Callback) -> LightningModule:
    cli = make_cli(args, run=False)
    cli.trainer.callbacks.extend(extra)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
    return cli.model


class _Batches(Callback):
    """Records the global RNG state that training (dropout) starts from, and every training batch (after
    augmentation) on the CPU."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []
        self.rng: torch.Tensor | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rng = torch.get_rng_state()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.batches.append({k: v.detach().cpu().clone() for k, v in batch.items()})


def _paired_batches(args: list[str], width: str, data_seed: int) -> _Batches:
    seen = _Batches()
    _fit([*args, "--model.init_args.backbone.init_args.widths", width, "--data.init_args.data_seed", str(data_seed)],
         None, seen)
    return seen


def test_data_seed_gives_different_models_the_same_batches(in_tmp: Path, gen_cls_root: Path) -> None:
    """Paired seeds (docs/reporting.md): two backbone widths, one ``seed_everything`` and one ``data_seed``: the same
    training batches (positions after augmentation, labels, order) and dropout stream; another ``data_seed``:
    another order."""
    args = ["--config", DEMO, *tiny_args(gen_cls_root, epochs=1), "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "0", "--seed_everything", "1"]
    narrow, wide = _paired_batches(args, "[16, 32]", 4), _paired_batches(args, "[48, 96]", 4)
    assert len(narrow.batches) == len(wide.batches) == 2
    for a, b in zip(narrow.batches, wide.batches):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(narrow.rng, wide.rng)
    other = _paired_batches(args, "[16, 32]", 5)
    assert not torch.equal(narrow.batches[0]["index"], other.batches[0]["index"])


@pytest.mark.parametrize("data_seed", [None, 3])
def test_resume_after_crash_continues_identically(
    tmp_path: Path, gen_cls_root: Path, monkeypatch: pytest.MonkeyPatch, data_seed: int | None
) -> None:
    args = ["--config", DEMO, *tiny_args(gen_cls_root, epochs=3)]
    if data_seed is not None:
        args += ["--data.init_args.data_seed", str(data_seed)]
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    straight = _fit(args)

    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(args, None, _Crash(at=2))
    start = _StartEpoch()
    resumed = _fit(args, "last", start)
    assert start.epoch == 2, "the resume did not load last.ckpt"

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


@pytest.mark.slow
def test_resumes_leave_last_at_the_final_epoch_and_one_best(in_tmp: Path, gen_cls_root: Path) -> None:
    """Killed mid-epoch twice, resumed with ``--ckpt_path last`` each time: every resume starts at the killed
    epoch, ``last.ckpt`` ends at the final epoch and exactly one best file remains, the one its state names."""
    args = ["--config", DEMO, *tiny_args(gen_cls_root, epochs=4)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(args, None, _Crash(at=1))
    start = _StartEpoch()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(args, "last", start, _Crash(at=3))
    assert start.epoch == 1
    _fit(args, "last", start)
    assert start.epoch == 3
    folder = in_tmp / "runs/demo/checkpoints"
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["epoch"] == 3
    (best,) = folder.glob("best-*.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == sorted([best.name, "last.ckpt"])
    states = [v for k, v in last["callbacks"].items() if "'val/acc'" in k]
    assert [Path(st["best_model_path"]).name for st in states] == [best.name]


def test_wandb_offline_run_has_logged_keys(in_tmp: Path, gen_cls_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.finish()  # a run an earlier test left open would be reused by the logger instead of a new offline one
    make_cli(["fit", "--config", DEMO, *tiny_args(gen_cls_root, epochs=1, csv=False)])
    wandb.finish()  # what the process's exit does for a command-line run
    runs = list((in_tmp / "runs/wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "expected one offline W&B run"
    # Offline runs keep their records (protobuf) in the .wandb file until `wandb sync`; the logged keys and
    # the snapshotted config appear in it verbatim.
    keys = (b"train/loss", b"val/acc", b"val/macc", b"lr-AdamW", b"CentroidBackbone", b"num_centroids",
            b"val/centroids/shape0/stage1", b"val/centroids/shape0/grid")
    for _ in range(40):  # W&B's service process may still be writing the file when finish() returns
        records = runs[0].read_bytes()
        if all(key in records for key in keys):
            break
        time.sleep(0.25)
    for key in keys:
        assert key in records, f"{key!r} not logged to W&B"


def test_fit_segmentation(in_tmp: Path, gen_seg_root: Path) -> None:
    seg_args = tiny_args(gen_seg_root)
    make_cli(["fit", "--config", DEMO_SEG, *seg_args])
    make_cli(["test", "--config", DEMO_SEG, *seg_args, "--ckpt_path", "last"])
    result = _last_metrics(in_tmp / "runs")
    assert {"test/miou_instance", "test/miou_class"} <= set(result["metrics"])
    assert 0.0 < result["metrics"]["test/miou_instance"] <= 1.0

    # per-point part labels of a user file, written back as a coloured .ply
    cloud = in_tmp / "cloud.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(400, 3)).astype(np.float32))
    category = result["names"][0]
    make_cli(["predict", "--config", DEMO_SEG, *seg_args, "--ckpt_path", "last",
              "--data.init_args.predict_files", json.dumps([str(cloud)]),
              "--data.init_args.predict_category", category])
    (row,) = json.loads(next((in_tmp / "runs").rglob("predictions.json")).read_text())
    task = load_task(str(in_tmp / "runs/demo_seg/checkpoints/last.ckpt"))
    allowed = set(torch.nonzero(task.part_mask[task.category_names.index(category)]).flatten().tolist())
    assert len(row["parts"]) == 400 and set(row["parts"]) <= allowed  # every row of the file, not the 128 sampled
    assert len(row["sampled_rows"]) == 128
    ply = o3d.io.read_point_cloud(row["ply"])
    assert len(ply.points) == 400 and ply.has_colors()


def _odd_h5_copy(gen_root: Path, out: Path) -> Path:
    """The tiny generated data rewritten as ``modelnet40_ply_hdf5_2048`` with an odd-sized test split,
    so that 2-process evaluation needs DistributedSampler padding (the case that double-counts)."""
    from datamodules.modelnet import ModelNetDataModule

    args = tiny_args(gen_root)
    gen = {k.rsplit(".", 1)[-1]: int(v) for k, v in zip(args, args[1:]) if k.startswith("--data.init_args.generator.")}
    from datamodules.synthetic.write import GeneratorConfig

    dm = ModelNetDataModule(str(gen_root), format="generated", num_points=512, generator=GeneratorConfig(**gen))
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    out.mkdir()
    (out / "shape_names.txt").write_text("\n".join(dm.class_names) + "\n")
    for split, drop in (("train", 0), ("test", 1)):
        ds = dm.datasets[split]
        rows = ds.indices[: len(ds.indices) - drop]
        with h5py.File(out / f"ply_data_{split}0.h5", "w") as f:
            f["data"] = ds.arrays["pos"][rows]
            f["normal"] = ds.arrays["normal"][rows]
            f["label"] = ds.arrays["label"][rows].astype(np.uint8)[:, None]
    return out


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process(in_tmp: Path, gen_cls_root: Path) -> None:
    """2 CPU processes (gloo): training runs, and the test metrics, single-view and voted (3 views), equal a
    1-process evaluation of the same checkpoint on an odd-sized test split (DistributedSampler pads: no shape
    double-counted)."""
    h5_root = _odd_h5_copy(gen_cls_root, in_tmp / "h5")
    base = [sys.executable, "-m", "app"]
    tiny = [*tiny_args(gen_cls_root, epochs=1),
            "--data.init_args.root", str(h5_root), "--data.init_args.format", "ply_hdf5"]
    ddp = ["--config", str(REPO / "configs/trainer/ddp_cpu.yaml")]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    subprocess.run([*base, "fit", "--config", DEMO, *tiny, *ddp], check=True, env=env, timeout=600)
    test = [*base, "test", "--config", DEMO, *tiny, "--ckpt_path", str(in_tmp / "runs/demo/checkpoints/last.ckpt"),
            "--model.init_args.vote_views", "3"]
    subprocess.run([*test, *ddp], check=True, env=env, timeout=600)
    two = _last_metrics(in_tmp / "runs")
    make_cli(test[3:])  # 1 process: in this one
    one = _last_metrics(in_tmp / "runs")
    assert one["num_samples"] == two["num_samples"] and one["num_samples"] % 2 == 1
    for confusion in ("confusion", "confusion_vote"):  # every shape counted once, the same way
        assert sum(map(sum, two["details"][confusion])) == two["num_samples"]
        assert one["details"][confusion] == two["details"][confusion]
    for key in ("test/acc", "test/macc", "test/loss", "test/acc_vote", "test/macc_vote"):
        assert one["metrics"][key] == pytest.approx(two["metrics"][key], abs=1e-6), key
