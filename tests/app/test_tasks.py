"""Tasks: one logits path, test-time voting against a hand computation, and the tested-checkpoint record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torch.utils.data import DataLoader

from app import callbacks
from app.cli import build_from_config, make_cli
from app.tasks import VOTE_SCALE, VOTE_TRANSLATE, ClassificationTask, SegmentationTask, checkpoint_kind, vote_transforms
from models.backbone import CentroidBackbone, StageSettings
from tests.app.conftest import DEMO, tiny_args

PART_MASK = [[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]]  # category 0 owns parts {0, 1}, category 1 owns {2, 3, 4}


def _backbone(in_channels: int = 0) -> CentroidBackbone:
    return CentroidBackbone(in_channels=in_channels, stem_width=16, num_centroids=[16, 4], widths=[16, 32],
                            stage=StageSettings(k=4))


def _clouds(n: int, points: int = 32, num_classes: int = 3, seed: int = 0) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {"pos": torch.randn(points, 3, generator=g) * 0.5, "label": torch.randint(num_classes, (), generator=g),
         "index": torch.tensor(i)}
        for i in range(n)
    ]


def _trainer(tmp_path: Path, **kwargs) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path, **kwargs)


def test_one_logits_path_classification() -> None:
    task = ClassificationTask(_backbone(in_channels=3), num_classes=4).eval()
    pos = torch.randn(2, 64, 3)
    batch = {"pos": pos, "normal": torch.nn.functional.normalize(pos, dim=-1), "index": torch.arange(2)}
    with torch.no_grad():
        want = task.head(task.backbone.forward_features(pos, batch["normal"]))  # composed by hand: head ∘ backbone
        without_normals = task.head(task.backbone.forward_features(pos, torch.zeros_like(pos)))
        logits = task.logits(batch)
        assert logits.shape == (2, 4) and not torch.allclose(want, without_normals)  # the normals matter
        torch.testing.assert_close(logits, want)
        torch.testing.assert_close(task(pos, batch["normal"]), want)
        torch.testing.assert_close(task.logits(batch, task.features(batch, return_attention=True)), want)
        pred = task.predict_step(batch, 0)
    torch.testing.assert_close(pred["probs"], want.softmax(-1))
    assert torch.equal(pred["pred"], logits.argmax(-1))


def test_one_logits_path_segmentation() -> None:
    task = SegmentationTask(_backbone(), num_parts=5, num_categories=2, part_mask=PART_MASK).eval()
    batch = {"pos": torch.randn(2, 64, 3), "category": torch.tensor([0, 1]), "index": torch.arange(2)}
    foreign = ~torch.tensor(PART_MASK, dtype=torch.bool)[batch["category"]]  # (B, P)
    with torch.no_grad():
        raw = task.head(task.backbone.forward_features(batch["pos"]), batch["category"])  # head ∘ backbone by hand
        want = raw.masked_fill(foreign.unsqueeze(1), float("-inf"))
        logits = task.logits(batch)
        torch.testing.assert_close(logits, want)
        torch.testing.assert_close(task(batch["pos"], batch["category"]), want)
        torch.testing.assert_close(task.logits(batch, task.features(batch, return_attention=True)), want)
        pred = task.predict_step(batch, 0)
    assert logits.shape == (2, 64, 5)
    assert torch.isinf(logits[foreign.unsqueeze(1).expand_as(logits)]).all()
    assert torch.isfinite(logits[~foreign.unsqueeze(1).expand_as(logits)]).all()
    assert torch.equal(pred["part"], logits.argmax(-1))


def test_tasks_declare_what_callers_read() -> None:
    """``names``, ``test_results`` and ``test_checkpoint`` exist from construction on, for either task."""
    cls = ClassificationTask(_backbone(), num_classes=3, class_names=["a", "b", "c"])
    seg = SegmentationTask(_backbone(), num_parts=5, num_categories=2, part_mask=PART_MASK)
    assert cls.names == cls.class_names == ["a", "b", "c"]
    assert seg.names == seg.category_names == ["0", "1"]
    for task in (cls, seg):
        assert task.test_results == {} and task.test_checkpoint is None


def test_vote_views_depend_only_on_seed_and_index() -> None:
    scale, shift = vote_transforms(torch.tensor([5, 2]), views=3, seed=1)
    assert scale.shape == shift.shape == (3, 2, 3) and scale.dtype == torch.float32
    alone_scale, alone_shift = vote_transforms(torch.tensor([2]), views=3, seed=1)  # another batch, another rank
    assert torch.equal(alone_scale[:, 0], scale[:, 1]) and torch.equal(alone_shift[:, 0], shift[:, 1])
    assert not torch.equal(vote_transforms(torch.tensor([2]), views=3, seed=2)[0], alone_scale)
    assert ((scale >= VOTE_SCALE[0]) & (scale <= VOTE_SCALE[1])).all() and (shift.abs() <= VOTE_TRANSLATE).all()


def test_vote_is_accuracy_of_mean_logits_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A linear fake model (logits = mean point @ W): the vote must be the accuracy of the mean of its logits
    over the seeded views, computed here by hand; a padded duplicate (as DistributedSampler adds) counts once."""
    views, seed = 5, 3
    weight = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0]])
    task = ClassificationTask(_backbone(), num_classes=3, vote_views=views, vote_seed=seed)
    monkeypatch.setattr(task, "logits", lambda batch, out=None: batch["pos"].mean(1) @ weight)
    samples = _clouds(9, seed=1)

    mean = torch.stack([s["pos"].mean(0) for s in samples]).double().numpy()  # (S, 3)
    labels = np.array([int(s["label"]) for s in samples])
    single, vote = [], []
    for i, m in enumerate(mean):
        rng = np.random.default_rng([seed, i])
        s, t = rng.uniform(0.8, 1.25, (views, 3)), rng.uniform(-0.1, 0.1, (views, 3))
        single.append(int(np.argmax(m @ weight.double().numpy())))
        vote.append(int(np.argmax(np.mean([(m * s[v] + t[v]) @ weight.double().numpy() for v in range(views)], 0))))
    single, vote = np.array(single), np.array(vote)
    assert (single != vote).any(), "the data must make voting change some prediction"

    def mean_class_acc(pred: np.ndarray) -> float:
        return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))

    padded = samples + [samples[0]]  # the padding repeats sample 0 with its index
    (result,) = _trainer(tmp_path).test(task, DataLoader(padded, batch_size=4))
    assert result["test/acc"] == pytest.approx((single == labels).mean())
    assert result["test/acc_vote"] == pytest.approx((vote == labels).mean())
    assert result["test/macc_vote"] == pytest.approx(mean_class_acc(vote))
    assert task.test_results["confusion_vote"].sum() == len(samples)


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_padded_duplicates_count_once_in_loss_and_metrics(tmp_path: Path, kind: str) -> None:
    """DistributedSampler pads with repeated samples (same ``index``): test loss and metrics must not change."""
    torch.manual_seed(0)
    samples = _clouds(7)
    if kind == "classification":
        task = ClassificationTask(_backbone(), num_classes=3)
    else:
        task = SegmentationTask(_backbone(), num_parts=5, num_categories=2, part_mask=PART_MASK)
        g = torch.Generator().manual_seed(1)
        for s in samples:
            s["category"] = s.pop("label") % 2
            parts = torch.tensor(PART_MASK[int(s["category"])]).nonzero().flatten()
            s["part"] = parts[torch.randint(len(parts), (32,), generator=g)]
    (plain,) = _trainer(tmp_path).test(task, DataLoader(samples, batch_size=4), verbose=False)
    (padded,) = _trainer(tmp_path).test(task, DataLoader(samples + samples[:1], batch_size=4), verbose=False)
    assert plain.keys() == padded.keys() and "test/loss" in plain
    for key in plain:
        assert padded[key] == pytest.approx(plain[key], abs=1e-6), key


def test_no_vote_metrics_when_off(tmp_path: Path) -> None:
    task = ClassificationTask(_backbone(), num_classes=3)
    (result,) = _trainer(tmp_path).test(task, DataLoader(_clouds(4), batch_size=4))
    assert "test/acc" in result and not any(k.endswith("_vote") for k in result)


def test_checkpoint_kind_rules() -> None:
    best_cb = "ModelCheckpoint{'monitor': 'val/acc'}"
    states = {"callbacks": {best_cb: {"monitor": "val/acc", "best_model_path": "/a/best-epoch=3.ckpt",
                                      "last_model_path": "/a/last.ckpt"},
                            "ModelCheckpoint{'monitor': None}": {"monitor": None, "best_model_path": "/a/final.ckpt",
                                                                  "last_model_path": ""}}}
    assert checkpoint_kind(None, states) == "none"
    assert checkpoint_kind("/moved/last.ckpt", states) == "last"
    assert checkpoint_kind("best-epoch=3.ckpt", states) == "best"
    assert checkpoint_kind("/a/final.ckpt", states) == "last"  # a monitor-less callback keeps the latest epoch
    assert checkpoint_kind("/a/epoch=1.ckpt", states) == "other"
    assert checkpoint_kind("/a/last.ckpt", {}) == "other"  # no checkpoint state: nothing to tell
    ours = {"callbacks": {"Checkpoints{'monitor': None}": {"monitor": None, "best_model_path": "/r/last.ckpt",
                                                           "last_model_path": ""}}}
    assert checkpoint_kind("/r/last.ckpt", ours) == "last"  # app.callbacks.Checkpoints, the configs' callback


@pytest.mark.slow
def test_test_records_its_checkpoint(tmp_path: Path) -> None:
    """fit, then test each kind of checkpoint: the record is in the JSON, in ``test_checkpoint`` and in hparams."""
    best = ModelCheckpoint(tmp_path / "ckpt", filename="best-{epoch}", monitor="val/acc", mode="max", save_last=True)
    final = ModelCheckpoint(tmp_path / "ckpt", filename="final")  # monitor-less: rewritten every epoch
    task, _ = build_from_config(DEMO, tiny_args(tmp_path / "data", csv=False))  # plain hparams: weights_only-safe
    clouds = [{**c, "normal": torch.nn.functional.normalize(c["pos"], dim=-1)} for c in _clouds(16)]
    loader = DataLoader(clouds, batch_size=8)
    _trainer(tmp_path, max_epochs=2, callbacks=[best, final]).fit(task, loader, loader)
    manual = tmp_path / "manual.ckpt"  # a checkpoint without ModelCheckpoint states
    torch.save({**torch.load(final.best_model_path, weights_only=True), "callbacks": {}}, manual)

    cases = [(final.best_model_path, "last", 1), (best.best_model_path, "best", None),
             (best.last_model_path, "last", None), (str(manual), "other", 1), (None, "none", None)]
    for i, (path, kind, epoch) in enumerate(cases):
        writer = callbacks.TestMetricsWriter()
        logger = CSVLogger(tmp_path, name="csv", version=i)
        trainer = Trainer(accelerator="cpu", logger=logger, callbacks=[writer], enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False)
        trainer.test(task, loader, ckpt_path=path)
        assert task.test_checkpoint is not None
        expected_epoch = torch.load(path, weights_only=True)["epoch"] if path else None
        assert task.test_checkpoint == {"path": path, "kind": kind, "epoch": expected_epoch}
        assert epoch is None or expected_epoch == epoch
        assert json.loads(writer.path.read_text())["checkpoint"] == task.test_checkpoint
        hparams = yaml.safe_load((tmp_path / "csv" / f"version_{i}" / "hparams.yaml").read_text())
        assert hparams["test_checkpoint"] == task.test_checkpoint


@pytest.mark.slow
def test_cli_test_votes_on_request_and_records_checkpoint(in_tmp: Path, gen_cls_root: Path) -> None:
    """`test --ckpt_path ... --model.init_args.vote_views K` votes although the checkpoint was trained without
    voting (LightningCLI applies the checkpoint's hyper-parameters over the command line; voting is not one)."""
    make_cli(["fit", "--config", DEMO, *tiny_args(gen_cls_root, epochs=1)])
    ckpt = in_tmp / "runs/demo/checkpoints/last.ckpt"
    make_cli(["test", "--config", DEMO, *tiny_args(gen_cls_root), "--ckpt_path", str(ckpt),
              "--model.init_args.vote_views", "2"])
    (path,) = (in_tmp / "runs").rglob("test_metrics*.json")
    result = json.loads(path.read_text())
    assert {"test/acc", "test/macc", "test/acc_vote", "test/macc_vote"} <= set(result["metrics"])
    assert result["checkpoint"]["kind"] == "last"  # the configs' monitor-less last.ckpt callback
    assert sum(map(sum, result["details"]["confusion_vote"])) == result["num_samples"]
    assert result["checkpoint"] == {"path": str(ckpt), "kind": "last", "epoch": 0}


def test_compile_runs_the_backbone_compiled_once_and_keeps_the_checkpoint_keys(tmp_path: Path, monkeypatch) -> None:
    """``compile=True`` compiles the backbone's forward once across Trainer calls (``aot_eager`` here: traced
    forward and backward without generating kernels); the compiled features equal the eager ones, and attention
    maps (for pictures) run eager."""
    compiled = []
    real = torch.compile

    def compile_(fn, **kwargs):
        compiled.append(fn)
        return real(fn, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_)
    torch.manual_seed(0)
    backbone = CentroidBackbone(stem_width=16, num_centroids=[16, 4], widths=[16, 32],
                                stage=StageSettings(k=4, steps=1), sampling="prefix")
    task = ClassificationTask(backbone, num_classes=3, compile=True)
    keys = set(task.state_dict())
    loader = DataLoader(_clouds(4), batch_size=2)
    trainer = _trainer(tmp_path, max_epochs=1, enable_checkpointing=False, limit_train_batches=1)
    trainer.fit(task, loader)
    trainer.validate(task, loader, verbose=False)
    assert len(compiled) == 1 and set(task.state_dict()) == keys
    batch = {"pos": torch.randn(2, 32, 3)}
    task.eval()
    with torch.no_grad():
        got = task.features(batch).stages[-1].feat
        pictures = task.features(batch, return_attention=True)  # eager: no recompilation for attention maps
        want = task.backbone.forward_features(batch["pos"]).stages[-1].feat
    assert len(compiled) == 1 and pictures.stages[0].attention is not None
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
