"""``python -m app.visualize`` end to end on a tiny generated data set and on user files."""

from __future__ import annotations

import colorsys
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from app import analysis, render, visualize
from app.cli import make_cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> str:
    """configs/demo.yaml, fully resolved, with a tiny generated data set in a temporary folder and no logger."""
    tmp = tmp_path_factory.mktemp("vis")
    overrides = [
        "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--data.init_args.root", str(tmp / "generated"), "--data.init_args.num_points", "256",
        "--data.init_args.generator.train_per_class", "1", "--data.init_args.generator.val_per_class", "1",
        "--data.init_args.generator.test_per_class", "1", "--data.init_args.generator.points", "512",
        "--model.init_args.backbone.init_args.num_centroids", "[64, 16, 4]",
        "--model.init_args.backbone.init_args.stage.k", "8",
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        make_cli(["--config", str(ROOT / "configs" / "demo.yaml"), *overrides, "--print_config"], run=False)
    path = tmp / "tiny.yaml"
    path.write_text(printed.getvalue())
    return str(path)


def _run(*args: str) -> dict[str, list[Path]]:
    return visualize.main(list(args))


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run the command expecting failure: exit status 1 and exactly one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as e:
        _run(*args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and len(err.splitlines()) == 1, err
    return err


def test_cli_on_generated_data(tiny_config, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    paths = _run("--config", tiny_config, "--split", "test", "--index", "0", "--out", str(out),
                 "--size", "200", "160", "--neighbors")
    printed = capsys.readouterr().out
    assert "predicted:" in printed and "untrained" in printed
    assert len(paths["ply"]) == 6  # points + centroids per stage
    counts = [len(o3d.io.read_point_cloud(str(p)).points) for p in paths["ply"]]
    assert counts == [256, 64, 256, 16, 256, 4]
    for p in paths["ply"]:
        assert str(p) in printed
    if render.renderer_problem() is None:
        assert [p.name for p in paths["png"]] == ["stage1.png", "stage2.png", "stage3.png"]
        for p in paths["png"]:
            img = np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
            assert img.shape == (160, 200, 3) and img.std() > 20
        assert paths["grid"][0].is_file()


def test_colours_in_the_ply_follow_the_assignments(tiny_config, tmp_path) -> None:
    task, datamodule = visualize.load_model(None, tiny_config)
    sample = analysis.sample_from_split(datamodule, "test", 1)
    a = analysis.analyse(task, sample, "x", trained=False)
    paths = analysis.render_analysis(a, tmp_path, (64, 48))
    _, cent_colors = render.stage_point_colors(a.stages)
    chained = render.chain_assignments([s.assignment for s in a.stages])
    for s in range(len(a.stages)):
        pts = o3d.io.read_point_cloud(str(tmp_path / f"stage{s + 1}_points.ply"))
        cen = o3d.io.read_point_cloud(str(tmp_path / f"stage{s + 1}_centroids.ply"))
        np.testing.assert_allclose(np.asarray(pts.colors), cent_colors[s][chained[s]], atol=1 / 255)
        np.testing.assert_allclose(np.asarray(cen.colors), cent_colors[s], atol=1 / 255)
        np.testing.assert_allclose(np.asarray(cen.points), a.stages[s].centroids, atol=1e-6)
    assert len(paths["ply"]) == 2 * len(a.stages)


def test_cli_on_a_user_file_without_normals(tiny_config, tmp_path) -> None:
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(1000, 3)).astype(np.float32)
    np.save(tmp_path / "blob.npy", cloud)
    paths = _run("--config", tiny_config, "--file", str(tmp_path / "blob.npy"), "--out", str(tmp_path / "o"),
                 "--size", "64", "48")
    assert len(o3d.io.read_point_cloud(str(paths["ply"][0])).points) == 256  # resampled to the config's N


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [("bad.txt", "1,2,3\n4,5\n", "line 2"), ("empty.txt", "", "empty"), ("x.npy", None, "file not found")],
)
def test_bad_input_files_get_a_clear_error(tiny_config, tmp_path, capsys, name, content, message) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    err = _fails(capsys, "--config", tiny_config, "--file", str(path), "--out", str(tmp_path / "o"))
    assert re.match(rf"error: .*{name}.*{message}", err)
    assert not (tmp_path / "o").exists()  # nothing written for a failed run


def test_refuses_to_overwrite_a_non_empty_folder(tiny_config, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert "not empty: pass --overwrite" in _fails(capsys, "--config", tiny_config, "--out", str(out))
    assert (out / "notes.txt").read_text() == "keep me"
    _run("--config", tiny_config, "--out", str(out), "--overwrite", "--size", "64", "48")
    assert (out / "notes.txt").read_text() == "keep me" and (out / "stage1_points.ply").is_file()


def test_default_output_folder_is_always_fresh(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(visualize, "DEFAULT_OUT_ROOT", tmp_path)
    (tmp_path / "shape").mkdir()
    assert visualize.prepare_out_dir(None, "shape") == tmp_path / "shape-1"


def test_ply_files_are_written_when_the_renderer_cannot_start(tiny_config, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(render, "renderer_problem", lambda: "exit code 1: no EGL")
    paths = _run("--config", tiny_config, "--out", str(tmp_path / "o"))
    assert paths["png"] == [] and paths["grid"] == [] and len(paths["ply"]) == 6
    assert "no PNGs: Open3D's offscreen renderer cannot start (exit code 1: no EGL)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_decides_the_data_settings(trained, tiny_config, tmp_path, capsys) -> None:
    """The checkpoint was trained on 128 points: pictures use 128, whatever the default config says (256 here)."""
    ckpt, _ = trained
    cloud = tmp_path / "blob.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32))
    paths = _run("--ckpt", str(ckpt), "--file", str(cloud), "--out", str(tmp_path / "o"), "--size", "64", "48")
    assert len(o3d.io.read_point_cloud(str(paths["ply"][0])).points) == 128
    err = _fails(capsys, "--ckpt", str(ckpt), "--config", tiny_config, "--file", str(cloud),
                 "--out", str(tmp_path / "p"))
    assert err.startswith(f"error: {ckpt}: trained on other data settings than the config's: "
                          "num_points: checkpoint 128, config 256")


def test_file_is_resampled_with_the_checkpoints_sampling(trained, tmp_path) -> None:
    """A checkpoint trained with ``sampling: random``: the file's points are the seeded random subset that
    ``predict`` would take, not the farthest-point subset (compared as sets: the order is not part of it)."""
    import torch

    from datamodules.files import load_file_sample

    ckpt, _ = trained
    state = torch.load(ckpt, weights_only=True)
    assert state["datamodule_hyper_parameters"]["sampling"] == "fps"
    state["datamodule_hyper_parameters"]["sampling"] = "random"
    random_ckpt = tmp_path / "random.ckpt"
    torch.save(state, random_ckpt)
    cloud = tmp_path / "blob.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32))
    paths = _run("--ckpt", str(random_ckpt), "--file", str(cloud), "--out", str(tmp_path / "o"), "--size", "64", "48")

    def point_set(pos: np.ndarray) -> set[tuple[float, ...]]:
        return {tuple(p) for p in np.round(np.asarray(pos, np.float64), 4)}

    drawn = point_set(o3d.io.read_point_cloud(str(paths["ply"][0])).points)
    assert len(drawn) == 128
    assert drawn == point_set(load_file_sample(cloud, 128, True, sampling="random")["pos"].numpy())
    assert drawn != point_set(load_file_sample(cloud, 128, True, sampling="fps")["pos"].numpy())


# ---------------------------------------------------------------------------------------------- paper scale
def test_paper_scale_picture_is_readable_on_a_real_sample(real_samples, tmp_path) -> None:
    """1024 points → 512 → 256 → 128 centroids on a real ModelNet40 shape: at most 10 colour groups in every
    panel, sibling shades inside a group, and sphere sizes that follow the mass each centroid summarises."""
    from app.cli import build_from_config
    from datamodules.files import load_file_sample

    task, _ = build_from_config(str(ROOT / "configs" / "demo.yaml"), [
        "--data.init_args.num_points", "1024", "--model.init_args.backbone.init_args.num_centroids", "[512, 256, 128]"])
    sample = load_file_sample(real_samples / "modelnet40_normal_resampled/bed/bed_0026.txt", 1024, True)
    a = analysis.analyse(task.eval(), sample, "bed_0026", trained=False)
    assert [len(s.centroids) for s in a.stages] == [512, 256, 128]
    groups = render.coarse_groups(a.stages[-1].centroids)
    assert groups.max() + 1 <= 10 and len(np.unique(groups)) == groups.max() + 1
    point_colors, _ = render.stage_point_colors(a.stages)
    group_of_point = groups[render.chain_assignments([s.assignment for s in a.stages])[-1]]  # (N,)
    for colors in point_colors:  # every panel: one hue per group (shades blend towards black/white, hue kept)
        hue = np.round([colorsys.rgb_to_hsv(*c)[0] for c in colors], 2)
        assert len(np.unique(hue)) <= 10
        for g in np.unique(group_of_point):
            assert len(np.unique(hue[group_of_point == g])) == 1
    masses = render.centroid_masses([s.assignment for s in a.stages], [512, 256, 128])
    assert [int(m.sum()) for m in masses] == [1024] * 3
    radii = render.mass_radii(masses[-1])
    assert radii[masses[-1].argmax()] == radii.max() and radii[masses[-1].argmin()] == radii.min()
    paths = analysis.render_analysis(a, tmp_path, (160, 120))
    assert len(paths["ply"]) == 6
