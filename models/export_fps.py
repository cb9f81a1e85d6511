"""Farthest point sampling written for export formats: a loop of ``ArgMax`` steps unrolled into the graph.

The model's FPS (``models.ops.farthest_point_sample``, ``method="auto"``) is one custom operator: torch.export
keeps it as one node, ONNX cannot express it. The functions here are the same exact FPS in plain torch
operators that every exporter knows (``gather``, ``sub``, ``pow``, ``sum``, ``minimum``, ``argmax``), unrolled
over the M picks for a fixed M (docs/export.md: why unrolled, measured against the alternatives).

Same start as the model (the point farthest from the cloud's mean, docs/operator.md §2) and the same tie rule
as the reference loop (``argmax``: the lower index), so the indices equal ``models.ops.farthest_point_sample``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.ops import farthest_from_mean, widest_dtype


def unrolled_farthest_point_sample(pos: Tensor, m: int) -> Tensor:
    """Exact FPS of ``m`` indices per cloud from the point farthest from its mean, as ``m`` unrolled steps.

    Shapes:
        pos: ``[B, N, 3]``; returns ``[B, m]`` long. The batch size B may be symbolic (dynamic) under export.
    """
    pos = pos.to(widest_dtype(torch.float32, pos))  # distances in float32 at least, as the model's operator
    far = farthest_from_mean(pos)  # (B,)
    # coordinates first: each step's Sub broadcasts over the last axis, which onnxruntime runs about 10x faster
    # than the [B, N, 3] - [B, 1, 3] broadcast (docs/export.md §5)
    coords = pos.transpose(1, 2).contiguous()  # (B, 3, N)
    picks, dist = [], None
    for _ in range(m):
        picks.append(far)
        picked = coords.gather(2, far.view(-1, 1, 1).expand(-1, 3, 1))  # (B, 3, 1)
        d = (coords - picked).pow(2).sum(1)  # (B, N)
        dist = d if dist is None else torch.minimum(dist, d)
        far = dist.argmax(-1)
    return torch.stack(picks, dim=1)


def farthest_point_order(pos: Tensor, m: int) -> Tensor:
    """A permutation ``[B, N]`` long of each cloud: its ``m`` FPS picks first (in pick order), then the other
    points in their input order, so that a model whose first stage takes a prefix (``sampling="prefix"``)
    sees the exact FPS seeds (docs/operator.md §2, docs/batch.md §5).

    Shapes:
        pos: ``[B, N, 3]``; returns ``[B, N]`` long.
    """
    B, N, _ = pos.shape
    picks = unrolled_farthest_point_sample(pos, m)  # (B, m)
    rank = torch.arange(N, device=pos.device).expand(B, N) + m  # unpicked points after the picks, in input order
    rank = rank.scatter(1, picks, torch.arange(m, device=pos.device).expand(B, m))
    return rank.argsort(dim=-1)
