"""Generate the default data sets and write them in the real on-disk layouts.

- ModelNet style = ``modelnet40_normal_resampled``: ``modelnet40_shape_names.txt``, ``modelnet40_{train,test}.txt``
  (ids without extension), ``filelist.txt``, ``<class>/<class>_NNNN.txt`` (``x,y,z,nx,ny,nz``, ``%f``).
- ShapeNetPart style = ``shapenetcore_partanno_segmentation_benchmark_v0_normal``: ``synsetoffset2category.txt``
  (made-up 8-digit synsets), ``<synset>/<model_id>.txt`` (``x y z nx ny nz part``, ``%f``, global part ids),
  ``train_test_split/shuffled_{train,val,test}_file_list.json``, plus ``part_table.json`` (the table travels
  with the data).

Each folder also gets ``GENERATED.json`` (the generator settings); a folder with matching settings is reused.
Output is written to a temporary folder and renamed into place, under a lock on the folder (``datamodules.locks``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from datamodules.errors import DataFormatError
from datamodules.locks import target_lock
from datamodules.mesh import sample_surface
from datamodules.synthetic.shapes import SHAPE_CLASSES, ShapeClass
from datamodules.tables import Category, PartTable

MARKER = "GENERATED.json"
Kind = Literal["modelnet", "shapenetpart"]
#: Bumped whenever the generator's output changes, so old generated folders are regenerated.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes of the generated data sets (per class) and the seed. Defaults: ~2k shapes, a few seconds."""

    train_per_class: int = 80
    val_per_class: int = 8
    test_per_class: int = 20
    points: int = 2048
    noise: float = 0.005
    seed: int = 0


CLASS_NAMES: list[str] = [c.name for c in SHAPE_CLASSES]
PART_TABLE: PartTable = PartTable(
    tuple(
        Category(c.name, f"9{i:07d}", tuple(range(sum(len(d.parts) for d in SHAPE_CLASSES[:i]),
                                                 sum(len(d.parts) for d in SHAPE_CLASSES[: i + 1]))))
        for i, c in enumerate(SHAPE_CLASSES)
    )
)


def sample_shape(cls: ShapeClass, rng: np.random.Generator, num_points: int, noise: float) -> np.ndarray:
    """One random instance: ``[num_points, 7]`` = xyz, unit normal, local part index; rotated about y."""
    parts = cls.build(rng)
    verts, tris, part_of_tri, offset = [], [], [], 0
    for part, (v, f) in parts:
        verts.append(v)
        tris.append(f + offset)
        part_of_tri.append(np.full(len(f), part))
        offset += len(v)
    v, f = np.concatenate(verts), np.concatenate(tris)
    a = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    pos, normal, face = sample_surface(v @ rot.T, f, num_points, rng)
    pos = pos + rng.normal(0, noise * np.abs(pos).max(), pos.shape)
    return np.concatenate([pos, normal, np.concatenate(part_of_tri)[face, None]], 1).astype(np.float32)


def _write_table(path: Path, a: np.ndarray, sep: str) -> None:
    """Write rows with ``%f`` (the real files' format), fast."""
    line = sep.join(["%f"] * a.shape[1]) + "\n"
    path.write_text((line * len(a)) % tuple(a.ravel().tolist()))


def _write_modelnet(out: Path, cfg: GeneratorConfig) -> None:
    rng = np.random.default_rng(cfg.seed)
    (out / "modelnet40_shape_names.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for cls in SHAPE_CLASSES:
        (out / cls.name).mkdir()
        for k in range(cfg.train_per_class + cfg.test_per_class):
            shape_id = f"{cls.name}_{k + 1:04d}"  # 1-based, continuing from train into test
            _write_table(out / cls.name / f"{shape_id}.txt", sample_shape(cls, rng, cfg.points, cfg.noise)[:, :6], ",")
            splits["train" if k < cfg.train_per_class else "test"].append(shape_id)
    for split, ids in splits.items():
        (out / f"modelnet40_{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    names = sorted(splits["train"] + splits["test"])
    (out / "filelist.txt").write_text("".join(f"{i.rsplit('_', 1)[0]}/{i}.txt\n" for i in names))


def _write_shapenetpart(out: Path, cfg: GeneratorConfig) -> None:
    rng = np.random.default_rng(cfg.seed + 1)
    (out / "synsetoffset2category.txt").write_text("".join(f"{c.name}\t{c.synset}\n" for c in PART_TABLE.categories))
    (out / "part_table.json").write_text(json.dumps(PART_TABLE.to_json(), indent=1))
    counts = {"train": cfg.train_per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
    lists: dict[str, list[str]] = {s: [] for s in counts}
    for cls, cat in zip(SHAPE_CLASSES, PART_TABLE.categories, strict=True):
        (out / cat.synset).mkdir()
        for split, n in counts.items():
            for _ in range(n):
                model_id = rng.bytes(16).hex().lstrip("0")  # variable-length hex ids, as in the real data
                n_points = int(cfg.points * rng.uniform(1.0, 1.25))  # variable N, as in the real data
                a = sample_shape(cls, rng, n_points, cfg.noise)
                a[:, 6] += cat.parts[0]  # local → global part id
                _write_table(out / cat.synset / f"{model_id}.txt", a, " ")
                lists[split].append(f"shape_data/{cat.synset}/{model_id}")
    (out / "train_test_split").mkdir()
    for split, entries in lists.items():
        order = rng.permutation(len(entries))
        listing = out / "train_test_split" / f"shuffled_{split}_file_list.json"
        listing.write_text(json.dumps([entries[i] for i in order]))


def generate(root: str | Path, kind: Kind, config: GeneratorConfig | None = None) -> Path:
    """Make ``root`` hold the generated ``kind`` data set for ``config`` (reusing a matching one). Returns ``root``.

    Concurrent callers on one ``root`` generate it once: the others wait for it (``datamodules.locks``).
    """
    root, cfg = Path(root), config or GeneratorConfig()
    stamp = {"kind": kind, "version": GENERATOR_VERSION, **asdict(cfg)}
    if _matches(root, stamp):
        return root
    with target_lock(root):
        if not _matches(root, stamp):  # not made meanwhile by the process that held the lock
            _generate(root, kind, cfg, stamp)
    return root


def _matches(root: Path, stamp: dict) -> bool:
    marker = root / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == stamp


def _generate(root: Path, kind: Kind, cfg: GeneratorConfig, stamp: dict) -> None:
    """Write the data set into a temporary folder beside ``root`` and rename it into place (caller holds the lock)."""
    marker = root / MARKER
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise DataFormatError(
            root, "exists and is not a generated data set: refusing to overwrite it; pick another root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.generating-"))
    try:
        (_write_modelnet if kind == "modelnet" else _write_shapenetpart)(tmp, cfg)
        (tmp / MARKER).write_text(json.dumps(stamp))
        if root.exists():  # an outdated generated folder (it has our marker): swap it out
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.replace(root, old)
            shutil.rmtree(old)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
