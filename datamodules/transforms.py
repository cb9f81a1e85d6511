"""Point transforms: unit-sphere normalisation and the standard training augmentations.

All operate on one sample (``pos [N, 3]``, optional ``normal [N, 3]``, optional per-point ``part [N]``) and draw
from ``generator`` when given (a data module's ``data_seed``: datamodules/seeding.py), else from torch's global
RNG, which Lightning's ``seed_everything`` and the DataLoader's per-worker seeding make reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from datamodules.sampling import fps_order

#: The keys of a sample with one row per point: reordered (or dropped) together.
PER_POINT_KEYS = ("pos", "normal", "part", "source_index")


def normalize_unit_sphere(pos: np.ndarray) -> np.ndarray:
    """Centre ``[..., N, 3]`` clouds on their mean and scale them so the farthest point has norm 1."""
    pos = pos - pos.mean(axis=-2, keepdims=True)
    radius = np.linalg.norm(pos, axis=-1).max(axis=-1)[..., None, None]
    return (pos / np.where(radius > 0, radius, 1)).astype(np.float32)


@dataclass
class Augment:
    """Training augmentations (never applied at val/test/predict). Defaults follow PointNet++/DGCNN practice.

    Attributes:
        scale: range of the per-axis (anisotropic) scale factors; ``None`` disables.
        translate: per-axis shift drawn from ``[-translate, translate]``; 0 disables.
        jitter_sigma: std of the per-point Gaussian noise; 0 disables.
        jitter_clip: the noise is clipped to ``[-jitter_clip, jitter_clip]``.
        rotate_up: random rotation about the up axis (y in ModelNet/ShapeNet files).
        dropout_max: each sample drops a ratio ``U(0, dropout_max)`` of its points, replacing them by its first
            point (N stays fixed); 0 disables.
        shuffle: permute the point order.
    """

    scale: tuple[float, float] | None = (0.8, 1.25)
    translate: float = 0.1
    jitter_sigma: float = 0.01
    jitter_clip: float = 0.05
    rotate_up: bool = False
    dropout_max: float = 0.875
    shuffle: bool = True

    def __call__(self, sample: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Augment one sample's ``pos``/``normal``/``part`` (a new dict; the input is not modified), drawing from
        ``generator`` (``None``: the global RNG)."""
        g = generator
        s = dict(sample)
        pos, normal = s["pos"], s.get("normal")
        n = pos.shape[0]
        per_point = [k for k in PER_POINT_KEYS if k in s]
        if self.shuffle:
            perm = torch.randperm(n, generator=g)
            for k in per_point:
                s[k] = s[k][perm]
        if self.dropout_max > 0:
            drop = torch.rand(n, generator=g) < torch.rand((), generator=g) * self.dropout_max
            for k in per_point:
                s[k] = torch.where(drop.view(-1, *[1] * (s[k].dim() - 1)), s[k][:1], s[k])
        pos, normal = s["pos"], s.get("normal")
        if self.rotate_up:
            t = torch.rand((), generator=g) * 2 * math.pi
            c, si = torch.cos(t).item(), torch.sin(t).item()
            rot = torch.tensor([[c, 0.0, si], [0.0, 1.0, 0.0], [-si, 0.0, c]])
            pos = pos @ rot.T
            normal = None if normal is None else normal @ rot.T
        if self.scale is not None:
            lo, hi = self.scale
            factor = lo + torch.rand(3, generator=g) * (hi - lo)
            pos = pos * factor
            if normal is not None:  # normals transform with the inverse transpose
                normal = torch.nn.functional.normalize(normal / factor, dim=-1)
        if self.translate > 0:
            pos = pos + (torch.rand(3, generator=g) * 2 - 1) * self.translate
        if self.jitter_sigma > 0:
            noise = torch.randn(pos.shape, dtype=pos.dtype, generator=g) * self.jitter_sigma
            pos = pos + noise.clamp(-self.jitter_clip, self.jitter_clip)
        s["pos"] = pos
        if normal is not None:
            s["normal"] = normal
        return s


@dataclass
class FPSOrder:
    """Deliver each sample's points in farthest-point order (after augmentation), so that every stage's
    seeds are a prefix of the cloud and the model samples nothing (docs/batch.md, docs/operator.md §2).

    Attributes:
        points: how many leading points to order (``None``: all; the rest follow in their current order).
    """

    points: int | None = None

    def __call__(self, sample: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Reorder ``pos`` and the other per-point keys (``PER_POINT_KEYS``) alike (a new dict; draws nothing)."""
        order = torch.from_numpy(fps_order(sample["pos"].numpy(), self.points))
        return {k: v[order] if k in PER_POINT_KEYS else v for k, v in sample.items()}


@dataclass
class Chain:
    """Apply ``transforms`` in turn, each drawing from the one ``generator`` (picklable, for loader workers)."""

    transforms: tuple

    def __call__(self, sample: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        for t in self.transforms:
            sample = t(sample, generator)
        return sample
