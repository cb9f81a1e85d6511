"""FLOPs per stage and parameter counts."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.backbone import CentroidBackbone, StageSettings
from models.flops import count_flops, count_parameters, gathered_kernels
from models.heads import ClassificationHead, SegmentationHead


def test_per_stage_flops_are_positive_and_sum_to_total() -> None:
    net = CentroidBackbone(stem_width=16, num_centroids=[64, 32, 16], widths=[32, 32, 32],
                           stage=StageSettings(k=8, heads=2))
    head = ClassificationHead(32, 10, hidden=[16])
    flops = count_flops(net, head, num_points=128, batch_size=2)
    assert list(flops) == ["stem", "stage_1", "stage_2", "stage_3", "head", "total"]
    assert all(v > 0 for v in flops.values())
    assert flops["total"] == sum(v for key, v in flops.items() if key != "total")
    # with equal widths a stage's cost follows its number of centroids: later stages are cheaper
    assert flops["stage_1"] > flops["stage_2"] > flops["stage_3"]
    assert net.training  # the counting does not leave the model in eval mode


def test_nothing_is_counted_outside_the_parts() -> None:
    net = CentroidBackbone(stem_width=16, num_centroids=[32, 16], widths=[16, 32],
                           stage=StageSettings(k=8, heads=2, mode="global"))
    seg = SegmentationHead(net.channels, 5, num_categories=2, hidden=16)
    flops = count_flops(net, seg, num_points=64)
    pos = torch.rand(1, 64, 3)
    net.eval(), seg.eval()  # as count_flops: the forward of inference (no batch statistics, which are normalisation)
    with FlopCounterMode(display=False) as counter, torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        seg(net.forward_features(pos), torch.zeros(1, dtype=torch.long))
    assert flops["total"] == counter.get_total_flops()
    # local attention on the same sizes costs less than global attention over every input
    local_net = CentroidBackbone(stem_width=16, num_centroids=[32, 16], widths=[16, 32],
                                 stage=StageSettings(k=8, heads=2))
    local = count_flops(local_net, num_points=64)
    assert local["stage_1"] < flops["stage_1"]


def test_default_classifier_flops_and_parameters() -> None:
    net, head = CentroidBackbone(), ClassificationHead(512, 40)
    flops = count_flops(net, head, num_points=1024)
    assert 1e8 < flops["total"] < 1e10 and all(v > 0 for v in flops.values())
    everything = sum(p.numel() for p in [*net.parameters(), *head.parameters()])
    assert count_parameters(net) + count_parameters(head) == everything
    frozen = ClassificationHead(4, 2, hidden=[])
    frozen.classifier.weight.requires_grad_(False)
    assert count_parameters(frozen) == 2  # the bias only


def test_local_attention_per_pair_products_are_counted_once_per_stage() -> None:
    """q·k, Σ a·v and the position code's q̃·r and Σ a·r (e = d: M·K·C multiply-accumulates each), at every one
    of the T steps, in the stage that runs them: what the counter sees with the gathered kernel beyond what it
    sees with the chunked one (a custom operator it does not look into)."""
    settings = StageSettings(k=8, heads=2, steps=2, kernel="chunked")
    net = CentroidBackbone(stem_width=16, num_centroids=[32, 16], widths=[16, 32], stage=settings).eval()
    flops = count_flops(net, num_points=64)
    assert {m.kernel for m in net.modules() if hasattr(m, "kernel")} == {"chunked"}  # given back after counting
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.rand(1, 64, 3))
    seen = counter.get_flop_counts()
    for s, (m, c) in enumerate(zip([32, 16], [16, 32])):
        pairs = 2 * 4 * (2 * m * 8 * c)  # T = 2 steps × 4 products × 2 FLOPs per MAC
        assert flops[f"stage_{s + 1}"] == sum(seen[f"CentroidBackbone.stages.{s}"].values()) + pairs
    with gathered_kernels(net), torch.no_grad(), FlopCounterMode(display=False) as gathered:
        net(torch.rand(1, 64, 3))
    assert gathered.get_total_flops() == sum(v for key, v in flops.items() if key != "total")
