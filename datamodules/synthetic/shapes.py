"""Parametric object classes: each builds a random instance as labelled part meshes (y is up).

Every class has 2-3 parts and random proportions; several classes share part types (table/bench/chair legs and
boards, bottle/rocket bodies) so that no single feature separates them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from datamodules.synthetic.primitives import Mesh, box, ellipsoid, frustum, tube_arc

PartMeshes = list[tuple[int, Mesh]]  # (local part index, mesh)


def _legs(rng: np.random.Generator, w: float, d: float, h: float, thick: float) -> list[Mesh]:
    inset = rng.uniform(0.0, 0.1)
    xs, zs = (w / 2 - thick / 2 - inset * w / 2), (d / 2 - thick / 2 - inset * d / 2)
    return [box((sx * xs, h / 2, sz * zs), (thick, h, thick)) for sx in (-1, 1) for sz in (-1, 1)]


def table(rng: np.random.Generator) -> PartMeshes:
    w, d, h, t = rng.uniform(1.0, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.6, 0.9), rng.uniform(0.04, 0.1)
    return [(0, box((0, h, 0), (w, t, d)))] + [(1, m) for m in _legs(rng, w, d, h, rng.uniform(0.04, 0.1))]


def bench(rng: np.random.Generator) -> PartMeshes:
    w, d, h, t = rng.uniform(1.2, 2.0), rng.uniform(0.3, 0.5), rng.uniform(0.35, 0.55), rng.uniform(0.04, 0.1)
    return [(0, box((0, h, 0), (w, t, d)))] + [(1, m) for m in _legs(rng, w, d, h, rng.uniform(0.04, 0.12))]


def chair(rng: np.random.Generator) -> PartMeshes:
    w, d, h, t = rng.uniform(0.45, 0.65), rng.uniform(0.45, 0.6), rng.uniform(0.4, 0.5), 0.05
    bh = rng.uniform(0.4, 0.7)
    back = box((0, h + bh / 2, -d / 2 + t / 2), (w, bh, t))
    return [(0, box((0, h, 0), (w, t, d))), (1, back)] + [(2, m) for m in _legs(rng, w, d, h, rng.uniform(0.03, 0.06))]


def bed(rng: np.random.Generator) -> PartMeshes:
    w, length, mh, lh = rng.uniform(0.9, 1.6), rng.uniform(1.8, 2.2), rng.uniform(0.2, 0.35), rng.uniform(0.1, 0.3)
    head = box((0, (lh + mh + rng.uniform(0.3, 0.6)) / 2, -length / 2), (w, lh + mh + rng.uniform(0.3, 0.6), 0.06))
    legs = _legs(rng, w, length, lh, 0.08)
    return [(0, box((0, lh + mh / 2, 0), (w, mh, length))), (1, head)] + [(2, m) for m in legs]


def lamp(rng: np.random.Generator) -> PartMeshes:
    rb, ph = rng.uniform(0.15, 0.25), rng.uniform(0.6, 1.0)
    sh, s_lo, s_hi = rng.uniform(0.2, 0.35), rng.uniform(0.2, 0.35), rng.uniform(0.08, 0.18)
    return [
        (0, frustum((0, 0.02, 0), rb, rb * rng.uniform(0.7, 1.0), 0.04)),
        (1, frustum((0, ph / 2, 0), 0.02, 0.02, ph)),
        (2, frustum((0, ph + sh / 2 - 0.05, 0), s_lo, s_hi, sh, caps=False)),
    ]


def airplane(rng: np.random.Generator) -> PartMeshes:
    length, r = rng.uniform(1.6, 2.4), rng.uniform(0.1, 0.16)
    span, chord = rng.uniform(1.4, 2.2), rng.uniform(0.25, 0.45)
    fin_h = rng.uniform(0.2, 0.35)
    tail_z = -length / 2 + 0.1
    return [
        (0, ellipsoid((0, 0, 0), (r, r, length / 2))),
        (1, box((0, 0, rng.uniform(-0.1, 0.2)), (span, 0.03, chord))),
        (2, box((0, fin_h / 2 + r * 0.5, tail_z), (0.03, fin_h, 0.2))),
        (2, box((0, r * 0.5, tail_z), (span * rng.uniform(0.25, 0.4), 0.03, 0.15))),
    ]


def mug(rng: np.random.Generator) -> PartMeshes:
    r, h = rng.uniform(0.3, 0.4), rng.uniform(0.6, 0.9)
    body_v, body_f = frustum((0, h / 2, 0), r, r * rng.uniform(0.9, 1.1), h, caps=False)
    bottom = frustum((0, 0.01, 0), r, r, 0.02)
    handle = tube_arc((r, h / 2, 0), h * rng.uniform(0.25, 0.35), 0.03, np.pi * 1.1)
    return [(0, (body_v, body_f)), (0, bottom), (1, handle)]


def bottle(rng: np.random.Generator) -> PartMeshes:
    r, h, nr, nh = rng.uniform(0.2, 0.3), rng.uniform(0.6, 0.9), rng.uniform(0.06, 0.1), rng.uniform(0.2, 0.35)
    shoulder = rng.uniform(0.08, 0.15)
    return [
        (0, frustum((0, h / 2, 0), r, r, h)),
        (1, frustum((0, h + shoulder / 2, 0), r, nr, shoulder, caps=False)),
        (1, frustum((0, h + shoulder + nh / 2, 0), nr, nr, nh, caps=False)),
        (2, frustum((0, h + shoulder + nh + 0.04, 0), nr * 1.2, nr * 1.2, 0.08)),
    ]


def guitar(rng: np.random.Generator) -> PartMeshes:
    rl, ru, t = rng.uniform(0.3, 0.4), rng.uniform(0.22, 0.3), rng.uniform(0.08, 0.14)
    nl, neck_y = rng.uniform(0.7, 1.0), rl + 1.6 * ru
    return [
        (0, ellipsoid((0, rl, 0), (rl, rl, t))),
        (0, ellipsoid((0, rl + 1.3 * ru, 0), (ru, ru, t))),
        (1, box((0, neck_y + nl / 2, 0), (0.07, nl, 0.04))),
        (2, box((0, neck_y + nl + 0.1, 0), (0.12, 0.2, 0.04))),
    ]


def rocket(rng: np.random.Generator) -> PartMeshes:
    r, h, nh = rng.uniform(0.12, 0.2), rng.uniform(1.2, 1.8), rng.uniform(0.25, 0.45)
    fin, n_fins = rng.uniform(0.15, 0.3), int(rng.integers(3, 5))
    fins = []
    for k in range(n_fins):
        a = 2 * np.pi * k / n_fins
        v, f = box((0, fin / 2, 0), (fin, fin * 1.5, 0.02))
        v = v + [r + fin / 2, 0, 0]
        rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        fins.append((2, (v @ rot.T, f)))
    return [(0, frustum((0, h / 2, 0), r, r, h)), (1, frustum((0, h + nh / 2, 0), r, 0.0, nh, caps=False))] + fins


def car(rng: np.random.Generator) -> PartMeshes:
    length, w, h, wr = rng.uniform(1.6, 2.2), rng.uniform(0.7, 0.9), rng.uniform(0.25, 0.35), rng.uniform(0.14, 0.2)
    cl, ch = length * rng.uniform(0.4, 0.6), rng.uniform(0.2, 0.3)
    wheels = [
        (2, frustum((sx * (w / 2 + 0.03), wr, sz * length * 0.32), wr, wr, 0.1, axis="x"))
        for sx in (-1, 1)
        for sz in (-1, 1)
    ]
    body = [(0, box((0, wr + h / 2, 0), (w, h, length))), (1, box((0, wr + h + ch / 2, -0.05), (w * 0.85, ch, cl)))]
    return body + wheels


def bookshelf(rng: np.random.Generator) -> PartMeshes:
    w, h, d, t = rng.uniform(0.6, 1.2), rng.uniform(1.2, 2.0), rng.uniform(0.25, 0.4), 0.03
    n = int(rng.integers(3, 6))
    shelves = [(1, box((0, y, 0), (w, t, d))) for y in np.linspace(t / 2, h - t / 2, n)]
    return [(0, box((sx * (w / 2 + t / 2), h / 2, 0), (t, h, d))) for sx in (-1, 1)] + shelves + [
        (2, box((0, h / 2, -d / 2 - t / 2), (w + 2 * t, h, t)))
    ]


@dataclass(frozen=True)
class ShapeClass:
    """A generated object class: its name, part names and instance builder."""

    name: str
    parts: tuple[str, ...]
    build: Callable[[np.random.Generator], PartMeshes]


SHAPE_CLASSES: tuple[ShapeClass, ...] = (
    ShapeClass("airplane", ("body", "wing", "tail"), airplane),
    ShapeClass("bed", ("mattress", "headboard", "leg"), bed),
    ShapeClass("bench", ("seat", "leg"), bench),
    ShapeClass("bookshelf", ("side", "shelf", "back"), bookshelf),
    ShapeClass("bottle", ("body", "neck", "cap"), bottle),
    ShapeClass("car", ("body", "cabin", "wheel"), car),
    ShapeClass("chair", ("seat", "back", "leg"), chair),
    ShapeClass("guitar", ("body", "neck", "head"), guitar),
    ShapeClass("lamp", ("base", "pole", "shade"), lamp),
    ShapeClass("mug", ("body", "handle"), mug),
    ShapeClass("rocket", ("body", "nose", "fin"), rocket),
    ShapeClass("table", ("top", "leg"), table),
)
