"""Heads: pooling classifier, inverse-distance feature propagation, category conditioning."""

from __future__ import annotations

import pytest
import torch

from models.backbone import BackboneOutput, StageOutput
from models.heads import ClassificationHead, SegmentationHead, interpolate


def test_classification_head_pools_max_and_mean_of_the_last_stage() -> None:
    head = ClassificationHead(4, 3, hidden=[8, 6], dropout=0.0)
    out = _fake_output(c_last=4)
    feat = out.stages[-1].feat
    assert head(out).shape == (2, 3)
    pooled = torch.cat([feat.amax(1), feat.mean(1)], -1)
    torch.testing.assert_close(head(out), head.classifier(head.mlp(pooled)))
    torch.testing.assert_close(head(out), head.classify(feat))
    assert head.mlp[0][0].in_features == 8  # max and mean, concatenated


def test_interpolate_equals_inverse_distance_formula() -> None:
    g = torch.Generator().manual_seed(0)
    fine = torch.rand(1, 7, 3, generator=g, dtype=torch.float64)
    coarse = torch.rand(1, 4, 3, generator=g, dtype=torch.float64)
    feat = torch.randn(1, 4, 2, generator=g, dtype=torch.float64)
    out = interpolate(fine, coarse, feat, k=3)
    for n in range(7):
        d = (coarse[0] - fine[0, n]).norm(dim=-1)
        near = d.argsort()[:3]
        w = 1 / (d[near] + 1e-8)
        torch.testing.assert_close(out[0, n], (w[:, None] * feat[0, near]).sum(0) / w.sum())
    torch.testing.assert_close(interpolate(coarse, coarse, feat, k=3), feat, rtol=1e-6, atol=1e-6)  # exact at sources
    assert interpolate(fine, coarse[:, :1], feat[:, :1], k=3).shape == (1, 7, 2)  # k capped at M


def _fake_output(b: int = 2, n: int = 20, c_last: int = 8) -> BackboneOutput:
    """A backbone output over n points: stem width 5, stages of 10 (width 6) and 4 (width ``c_last``) centroids."""
    g = torch.Generator().manual_seed(1)
    stages, sizes = [], [(10, 6), (4, c_last)]
    for m, c in sizes:
        stages.append(
            StageOutput(torch.rand(b, m, 3, generator=g), torch.randn(b, m, c, generator=g),
                        torch.zeros(b, m, dtype=torch.long), torch.zeros(b, m, 2, dtype=torch.long), None, None)
        )
    return BackboneOutput(torch.rand(b, n, 3, generator=g), torch.randn(b, n, 5, generator=g), stages)


def test_segmentation_head_shapes_and_category_conditioning() -> None:
    head = SegmentationHead([5, 6, 8], num_parts=4, num_categories=3, hidden=16, dropout=0.0)
    out = _fake_output()
    a = head(out, torch.tensor([0, 1]))
    assert a.shape == (2, 20, 4)
    b = head(out, torch.tensor([2, 1]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])  # the category changes its own cloud only
    with pytest.raises(ValueError, match="category"):
        head(out)
    with pytest.raises(ValueError, match="category values"):
        head(out, torch.tensor([0, 3]))
    plain = SegmentationHead([5, 6, 8], num_parts=4, hidden=16)
    assert plain(out).shape == (2, 20, 4)


def test_segmentation_head_uses_every_level() -> None:
    head = SegmentationHead([5, 6, 8], num_parts=4, hidden=16, dropout=0.0)
    out = _fake_output()
    for level in [out, *out.stages]:
        level.feat.requires_grad_(True)
    head(out).sum().backward()
    assert all(level.feat.grad.abs().sum() > 0 for level in [out, *out.stages])
