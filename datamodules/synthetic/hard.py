"""The hard generated task (docs/hard_task.md): 40 fine-grained classes written in the ModelNet
``modelnet40_normal_resampled`` layout, calibrated so that models separate (no 99 % ceiling).

Class = one of 10 base shapes × one of 4 small local details (none, knob, spike, ring) sitting on top of
the shape: the 4 classes of a base shape differ only in a region of a few percent of the surface. Every
instance is then degraded like a scan: a partial view (a random plane cut removes up to ``occlusion`` of the
surface), uneven density (points kept with weights ``exp(density · d)`` along a random direction d in units of
the shape's radius) and sensor-like noise (isotropic ``noise`` plus twice as much along the view axis).
Few training shapes per class. Fixed seed; the folder carries ``HARD_TASK.json`` (its settings) and is reused
when they match. Validation is a held-out fraction of train (``val_split`` of the data module).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from datamodules.locks import target_lock
from datamodules.mesh import sample_surface
from datamodules.synthetic.primitives import Mesh, ellipsoid, frustum, tube_arc
from datamodules.synthetic.shapes import SHAPE_CLASSES
from datamodules.synthetic.write import _write_table

MARKER = "HARD_TASK.json"
#: Bumped whenever the output changes, so old folders are regenerated.
HARD_VERSION = 2
BASES = SHAPE_CLASSES[:10]
DETAILS = ("plain", "knob", "spike", "ring")
CLASS_NAMES: list[str] = [f"{b.name}_{d}" for b in BASES for d in DETAILS]


@dataclass(frozen=True)
class HardConfig:
    """The task's difficulty knobs and sizes per class, calibrated on validation accuracy (docs/hard_task.md §2)."""

    train_per_class: int = 20
    test_per_class: int = 15
    points: int = 1024
    detail_size: float = 0.44  # the detail's size as a fraction of the shape's radius
    noise: float = 0.005  # sensor noise std, fraction of the radius
    density: float = 1.0  # uneven density strength (0: uniform)
    occlusion: float = 0.15  # the largest fraction of the surface a partial view removes
    seed: int = 0


def _detail(kind: str, top: np.ndarray, size: float) -> list[Mesh]:
    """The local structure of class ``kind`` standing on the point ``top`` (empty for ``plain``)."""
    x, y, z = top
    if kind == "knob":
        return [ellipsoid((x, y + size / 2, z), (size / 2, size / 2, size / 2))]
    if kind == "spike":
        return [frustum((x, y + size, z), size / 4, 0.0, 2 * size)]
    if kind == "ring":
        return [tube_arc((x, y + size / 2, z), size / 2, size / 8, 2 * np.pi)]
    return []


def sample_hard(base: int, detail: str, rng: np.random.Generator, cfg: HardConfig) -> np.ndarray:
    """One degraded instance of class (``base``, ``detail``): ``[cfg.points, 6]`` float32 = xyz, unit normal."""
    meshes = [m for _, m in BASES[base].build(rng)]
    v_all = np.concatenate([v for v, _ in meshes])
    radius = np.linalg.norm(v_all - v_all.mean(0), axis=1).max()
    top_y = v_all[:, 1].max()
    anchor = v_all[v_all[:, 1] > top_y - 1e-6][rng.integers((v_all[:, 1] > top_y - 1e-6).sum())]
    meshes += _detail(detail, anchor, cfg.detail_size * radius)
    verts, tris, offset = [], [], 0
    for v, f in meshes:
        verts.append(v)
        tris.append(f + offset)
        offset += len(v)
    pos, normal, _ = sample_surface(np.concatenate(verts), np.concatenate(tris), 4 * cfg.points, rng)
    centred = (pos - v_all.mean(0)) / radius
    view = rng.normal(size=3)
    view /= np.linalg.norm(view)
    depth = centred @ view  # partial view: drop the points beyond a random plane orthogonal to the view
    keep = depth <= np.quantile(depth, 1 - rng.uniform(0, cfg.occlusion))
    pos, normal, centred = pos[keep], normal[keep], centred[keep]
    direction = rng.normal(size=3)
    weight = np.exp(cfg.density * centred @ (direction / np.linalg.norm(direction)))
    idx = rng.choice(len(pos), cfg.points, replace=len(pos) < cfg.points, p=weight / weight.sum())
    pos, normal = pos[idx], normal[idx]
    depth_noise = np.outer(rng.normal(0, 2 * cfg.noise * radius, len(pos)), view)  # (N, 3), along the view axis
    pos = pos + rng.normal(0, cfg.noise * radius, pos.shape) + depth_noise
    pos = pos - pos.mean(0)  # as ModelNet's files: each cloud centred and scaled into the unit sphere
    pos = pos / np.linalg.norm(pos, axis=1).max()
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return np.concatenate([pos @ rot.T, normal @ rot.T], 1).astype(np.float32)


def _write(out: Path, cfg: HardConfig) -> None:
    rng = np.random.default_rng(cfg.seed)
    (out / "modelnet40_shape_names.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for label, name in enumerate(CLASS_NAMES):
        (out / name).mkdir()
        for k in range(cfg.train_per_class + cfg.test_per_class):
            shape_id = f"{name}_{k + 1:04d}"
            a = sample_hard(label // len(DETAILS), DETAILS[label % len(DETAILS)], rng, cfg)
            _write_table(out / name / f"{shape_id}.txt", a, ",")
            splits["train" if k < cfg.train_per_class else "test"].append(shape_id)
    for split, ids in splits.items():
        (out / f"modelnet40_{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    ids = sorted(splits["train"] + splits["test"])
    (out / "filelist.txt").write_text("".join(f"{i.rsplit('_', 1)[0]}/{i}.txt\n" for i in ids))


def generate_hard(root: str | Path, config: HardConfig | None = None) -> Path:
    """Make ``root`` hold the hard task for ``config`` (reusing a matching folder, under a lock). Returns ``root``."""
    root, cfg = Path(root), config or HardConfig()
    stamp = {"version": HARD_VERSION, **asdict(cfg)}
    marker = root / MARKER
    with target_lock(root):
        if marker.is_file() and json.loads(marker.read_text()) == stamp:
            return root
        if root.exists() and any(root.iterdir()) and not marker.is_file():
            raise FileExistsError(f"{root}: exists and is not a hard-task folder; refusing to overwrite it")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.generating-"))
        try:
            _write(tmp, cfg)
            (tmp / MARKER).write_text(json.dumps(stamp))
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> None:
    """``python -m datamodules.synthetic.hard --out data/hard_modelnet [--noise 0.02 ...]``."""
    parser = argparse.ArgumentParser(description="write the hard generated task (docs/hard_task.md)")
    parser.add_argument("--out", type=Path, default=Path("data/hard_modelnet"))
    for f in fields(HardConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    print(generate_hard(args.out, HardConfig(**{f.name: getattr(args, f.name) for f in fields(HardConfig)})))


if __name__ == "__main__":
    main()
