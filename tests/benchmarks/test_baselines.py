"""The baselines: ball query against a brute-force reference, the published PointNet++, the fair full
attention, DGCNN's counted kNN, and the backbone contract the tasks use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.baselines import DGCNN, FullAttentionBackbone, PointNet2SSG, PointNet2SSGBall, ball_query, feature_knn
from benchmarks.harness import build_classifier, forward_gflops
from models.backbone import BackboneOutput


def _ball_query_reference(queries: torch.Tensor, points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """Loops in float64: the first k indices within the radius, padded with the first (0 when none)."""
    q, p = queries.double(), points.double()
    out = torch.zeros(*queries.shape[:2], k, dtype=torch.long)
    for b in range(q.shape[0]):
        for i in range(q.shape[1]):
            inside = [j for j in range(p.shape[1]) if float(((p[b, j] - q[b, i]) ** 2).sum()) < radius**2][:k]
            inside = inside or [0]
            out[b, i] = torch.tensor(inside + [inside[0]] * (k - len(inside)))
    return out


@pytest.mark.parametrize(("radius", "k", "chunk"), [(0.3, 8, 1024), (0.15, 4, 2), (2.0, 70, 3), (0.01, 5, 4)])
def test_ball_query_matches_the_brute_force_reference(radius: float, k: int, chunk: int) -> None:
    torch.manual_seed(0)
    queries, points = torch.rand(2, 7, 3), torch.rand(2, 60, 3)
    got = ball_query(queries, points, radius, k, chunk_size=chunk)
    assert got.dtype == torch.long and got.shape == (2, 7, k)
    assert torch.equal(got, _ball_query_reference(queries, points, radius, k))


def test_ball_query_at_a_seed_holds_the_seed() -> None:
    torch.manual_seed(1)
    points = torch.rand(1, 40, 3)
    idx = ball_query(points[:, [5, 17]], points, 1e-6, 4)
    assert torch.equal(idx, torch.tensor([[[5] * 4, [17] * 4]]))


def test_published_pointnet2_has_its_layers_ball_query_and_batchnorm() -> None:
    model = PointNet2SSGBall()
    first, second, last = model.stages
    assert (first.num_centroids, first.radius, first.k, second.num_centroids, second.radius, second.k) == (
        512, 0.2, 32, 128, 0.4, 64)
    assert last.radius is None and model.out_channels == 1024 and model.channels == [3, 128, 256, 1024]
    assert [m.out_features for m in first.mlp if isinstance(m, nn.Linear)] == [64, 64, 128]
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 9
    out = PointNet2SSGBall(num_centroids=[32, 8]).forward_features(torch.rand(2, 64, 3) - 0.5)
    assert [s.feat.shape for s in out.stages] == [(2, 32, 128), (2, 8, 256), (2, 1, 1024)]
    assert out.stages[0].neighbors.shape == (2, 32, 32)


def test_published_pointnet2_takes_normals() -> None:
    model = PointNet2SSGBall(in_channels=3, num_centroids=[16, 4])
    assert model(torch.rand(2, 32, 3), torch.rand(2, 32, 3)).shape == (2, 1, 1024)


def test_full_attention_is_a_pre_norm_layer_with_a_position_code_and_batchnorm_pooling() -> None:
    model = FullAttentionBackbone(num_centroids=[32, 16, 8])
    stage = model.stages[0]
    norms = [m for m in stage.attention.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2  # one per residual branch (attention, feed-forward)
    assert isinstance(stage.pool.norm, nn.BatchNorm1d) and isinstance(stage.pos_code, nn.Sequential)
    pos = torch.rand(2, 64, 3)
    moved = pos + torch.tensor([0.5, 0.0, 0.0])  # the position code sees absolute positions
    model.eval()
    assert not torch.allclose(model(pos), model(moved))


def test_full_attention_takes_the_centroid_configs_pooling_and_blocks() -> None:
    """``pool_layers=2, ffn_ratio=0`` (the learning benchmark's, as the centroid configs'): a two-layer KNN pooling
    and layers of attention only, each ``h + γ_a ⊙ MHA(LN(h))``."""
    torch.manual_seed(0)
    model = FullAttentionBackbone(num_centroids=[32, 16, 8], pool_layers=2, ffn_ratio=0)
    stage = model.stages[0]
    assert stage.pool.hidden is not None and stage.attention.ffn is None and stage.attention.gamma_ffn is None
    assert sum(isinstance(m, nn.LayerNorm) for m in stage.attention.modules()) == 1
    layer, h = stage.attention, torch.randn(2, 20, 128)
    out, weights = layer(h, return_attention=True)
    att = (weights @ layer.qkv(layer.norm_attn(h)).view(2, 20, 3, 4, 32)[:, :, 2].transpose(1, 2))  # Σ_j a_ij v_j
    expected = h + layer.gamma_attn * layer.out(att.transpose(1, 2).reshape(2, 20, 128))
    torch.testing.assert_close(out, expected)
    assert model(torch.rand(2, 64, 3)).shape == (2, 8, 512)


def test_full_attention_fast_and_plain_attention_agree() -> None:
    torch.manual_seed(0)
    layer = FullAttentionBackbone(num_centroids=[32, 16, 8], layer_scale=None).stages[0].attention
    h = torch.randn(2, 20, 128)
    fast, _ = layer(h)
    plain, weights = layer(h, return_attention=True)
    assert torch.allclose(fast, plain, atol=1e-5) and weights.shape == (2, 4, 20, 20)


def test_feature_knn_matches_cdist_and_dgcnn_flops_count_it() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 50, 8)
    assert torch.equal(feature_knn(x, 5, chunk_size=7), torch.cdist(x, x).topk(5, largest=False).indices)
    model = build_classifier("dgcnn", 256, num_classes=40)
    knn_flops = sum(2 * 256 * 256 * c for c in (64, 128, 256)) / 1e9  # the three layers' distance matmuls
    with_knn = forward_gflops(model, torch.rand(1, 256, 3))
    assert with_knn >= knn_flops


@pytest.mark.parametrize("backbone", [
    PointNet2SSGBall(num_centroids=[32, 8]), FullAttentionBackbone(num_centroids=[32, 16, 8]),
    PointNet2SSG(num_centroids=[32, 16, 8]), DGCNN(),
])
def test_baselines_keep_the_backbone_contract_of_the_tasks(backbone: nn.Module) -> None:
    """What the tasks read: ``forward_features`` → BackboneOutput with one StageOutput per stage, ``in_channels``,
    ``channels``, ``out_channels``, ``stages[0].sampling``; every parameter gets a gradient."""
    from app.tasks import ClassificationTask

    task = ClassificationTask(backbone, num_classes=5)
    pos = torch.rand(2, 64, 3) - 0.5
    out = backbone.forward_features(pos)
    assert isinstance(out, BackboneOutput) and len(out.stages) == len(backbone.stages)
    assert out.stages[-1].feat.shape[-1] == backbone.out_channels == backbone.channels[-1]
    assert backbone.in_channels == 0 and backbone.stages[0].sampling == "fps"
    logits = task.head_logits(task.features({"pos": pos}), {"pos": pos})
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_parameter_matched_variant_is_within_five_percent_of_pointnet2() -> None:
    from benchmarks.experiments import VARIANTS
    from models.flops import count_parameters

    matched = next(v for label, v in VARIANTS.items() if label.startswith("widths"))
    ours = count_parameters(build_classifier("centroid_local", 1024, 40, widths=matched.widths))
    theirs = count_parameters(build_classifier("pointnet2", 1024, 40))
    assert abs(ours / theirs - 1) < 0.05
