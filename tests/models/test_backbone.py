"""Backbone: shapes and contract, invariances, edge sizes, errors, gradients, a 100k-point stage."""

from __future__ import annotations

import copy
import resource
import time

import numpy as np
import pytest
import torch

from datamodules.sampling import fps_order
from models.backbone import CentroidBackbone, CentroidStage, KNNInit, StageSettings
from models.heads import ClassificationHead, SegmentationHead
from models.ops import TRITON, farthest_point_sample

SMALL = dict(stem_width=16, num_centroids=[32, 16, 8], widths=[16, 24, 32])


def small(**stage: object) -> dict:
    """The small backbone's arguments: :data:`SMALL` and stage settings k = 6, 2 heads, updated by ``stage``."""
    return dict(SMALL, stage=StageSettings(**{"k": 6, "heads": 2, **stage}))


def _cloud(b: int, n: int, seed: int, channels: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, n, 3, generator=g)
    return pos, (torch.randn(b, n, channels, generator=g) if channels else None)


@pytest.mark.parametrize("mode", ["local", "global"])
def test_contract_shapes_and_assignments(mode: str) -> None:
    torch.manual_seed(0)
    net = CentroidBackbone(in_channels=3, **small(mode=mode, k_attn=8, self_attention_blocks=1))
    assert net.out_channels == 32 and net.channels == [16, 16, 24, 32]
    pos, x = _cloud(2, 64, 1, 3)
    out = net.forward_features(pos, x, return_attention=True)
    assert out.pos is pos and out.feat.shape == (2, 64, 16) and len(out.stages) == 3
    n_in = 64
    for s, (m, c) in zip(out.stages, [(32, 16), (16, 24), (8, 32)]):
        assert s.pos.shape == (2, m, 3) and s.feat.shape == (2, m, c)
        assert s.seed_idx.shape == (2, m) and s.seed_idx.dtype == torch.long
        assert s.neighbors.shape == (2, m, 6) and s.neighbors.dtype == torch.long
        assert s.attention.shape == ((2, 2, m, 8) if mode == "local" else (2, 2, m, n_in))
        torch.testing.assert_close(s.attention.sum(-1), torch.ones(2, 2, m))
        assert s.assignment.shape == (2, n_in) and s.assignment.min() >= 0 and s.assignment.max() < m
        n_in = m
    torch.testing.assert_close(net(pos, x), out.stages[-1].feat)  # SDPA path vs the weights-returning path
    plain = net.forward_features(pos, x)
    assert plain.stages[0].assignment is None and plain.stages[0].attention is None


def test_centroids_sit_on_their_seeds() -> None:
    net = CentroidBackbone(**small())
    pos, _ = _cloud(2, 64, 2)
    out = net.forward_features(pos)
    prev = pos
    for s in out.stages:
        assert torch.equal(s.pos, torch.gather(prev, 1, s.seed_idx.unsqueeze(-1).expand(-1, -1, 3)))
        prev = s.pos


def test_local_assignment_reaches_every_input() -> None:
    # few centroids with few neighbours: many inputs lie in no neighbourhood and go to the nearest centroid
    net = CentroidBackbone(stem_width=8, num_centroids=[4], widths=[8], stage=StageSettings(k=2, heads=2))
    pos, _ = _cloud(1, 40, 3)
    stage = net.forward_features(pos, return_attention=True).stages[0]
    nearest = torch.cdist(pos, stage.pos).argmin(-1)  # (1, 40)
    seen = torch.zeros(40, dtype=torch.bool)
    seen[stage.neighbors.flatten()] = True
    assert torch.equal(stage.assignment[0, ~seen], nearest[0, ~seen])
    assert torch.equal(stage.assignment[0, stage.seed_idx[0]], torch.arange(4))  # a seed sees itself most


@pytest.mark.parametrize("mode", ["local", "global"])
def test_point_order_and_batch_order_do_not_matter(mode: str) -> None:
    torch.manual_seed(0)
    net = CentroidBackbone(in_channels=3, **small(mode=mode, self_attention_blocks=1)).eval()
    cls = ClassificationHead(net.out_channels, 5, hidden=[16]).eval()
    seg = SegmentationHead(net.channels, 4, num_categories=3, hidden=16).eval()
    pos, x = _cloud(3, 50, 4, 3)
    cat = torch.tensor([0, 2, 1])
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = net.forward_features(pos, x)
        out_p = net.forward_features(pos[:, perm], x[:, perm])
        logits, logits_p = cls(out), cls(out_p)
        parts, parts_p = seg(out, cat), seg(out_p, cat)
        flip = torch.tensor([2, 0, 1])
        logits_b = cls(net.forward_features(pos[flip], x[flip]))
    torch.testing.assert_close(logits_p, logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(parts_p, parts[:, perm], rtol=0, atol=1e-4)
    torch.testing.assert_close(logits_b, logits[flip], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "n, centroids, k",
    [(1, [1], 1), (17, [17], 17), (17, [17, 1], 5), (17, [8, 4], 4), (5, [1], 5)],
    ids=["N=1", "M=N=k=17", "M=N-then-M=1", "N=17", "M=1,k=N"],
)
def test_edge_sizes(n: int, centroids: list[int], k: int) -> None:
    net = CentroidBackbone(stem_width=8, num_centroids=centroids, widths=[8] * len(centroids),
                           stage=StageSettings(k=k, heads=2))
    cls = ClassificationHead(8, 3, hidden=[8])
    seg = SegmentationHead(net.channels, 2, hidden=8)
    pos, _ = _cloud(2, n, 6)
    out = net.forward_features(pos, return_attention=True)
    assert cls(out).shape == (2, 3)
    assert seg(out).shape == (2, n, 2)
    assert out.stages[-1].feat.shape == (2, centroids[-1], 8) and torch.isfinite(out.stages[-1].feat).all()


def test_global_mode_and_clustering_norm_run_and_differ() -> None:
    pos, _ = _cloud(2, 40, 7)
    torch.manual_seed(0)
    a = CentroidBackbone(**small(mode="global"))
    torch.manual_seed(0)
    b = CentroidBackbone(**small(mode="global", clustering_norm=True))
    fa, fb = a(pos[:, :40]), b(pos[:, :40])
    assert torch.isfinite(fb).all() and not torch.allclose(fa, fb)


def test_random_sampling_draws_distinct_seeds() -> None:
    net = CentroidBackbone(sampling="random", **small())
    out = net.forward_features(_cloud(2, 64, 8)[0])
    for s in out.stages:
        assert all(len(set(row.tolist())) == row.numel() for row in s.seed_idx)


@pytest.mark.parametrize(
    "kwargs, pos, x, match",
    [
        ({}, torch.rand(2, 20, 3), None, "stage 1: num_centroids=32 is larger than its number of inputs N=20"),
        ({"num_centroids": [8, 4], "widths": [8, 8], "stage": {"k": 10}}, torch.rand(2, 20, 3), None, "stage 2: k=10"),
        ({"stage": {"k_attn": 40}}, torch.rand(2, 36, 3), None, "k_attn=40"),
        ({}, torch.full((2, 64, 3), float("nan")), None, "NaN"),
        ({}, torch.rand(64, 3), None, r"\[B, N, 3\]"),
        ({}, torch.rand(2, 64, 2), None, r"\[B, N, 3\]"),
        ({}, torch.rand(2, 64, 3), torch.rand(2, 64, 3), "in_channels=0"),
        ({"in_channels": 3}, torch.rand(2, 64, 3), torch.rand(2, 64, 6), r"\(2, 64, 3\)"),
        ({"in_channels": 3}, torch.rand(2, 64, 3), None, "got None"),
    ],
)
def test_errors(kwargs: dict, pos: torch.Tensor, x: torch.Tensor | None, match: str) -> None:
    net = CentroidBackbone(**{**small(**kwargs.get("stage", {})), **{k: v for k, v in kwargs.items() if k != "stage"}})
    with pytest.raises(ValueError, match=match):
        net.forward_features(pos, x)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="equal length"):
        CentroidBackbone(num_centroids=[4, 2], widths=[8])
    with pytest.raises(ValueError, match="sampling"):
        CentroidBackbone(sampling="grid")
    with pytest.raises(ValueError, match="divisible"):
        CentroidBackbone(widths=[10, 256, 512], stage=StageSettings(heads=4))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_gradients_reach_every_parameter(task: str) -> None:
    torch.manual_seed(0)
    net = CentroidBackbone(in_channels=3, **small(self_attention_blocks=1))
    pos, x = _cloud(2, 64, 9, 3)
    if task == "classification":
        head = ClassificationHead(net.out_channels, 4, hidden=[16], dropout=0.0)
        loss = head(net.forward_features(pos, x)).logsumexp(-1).sum()
    else:
        head = SegmentationHead(net.channels, 3, num_categories=2, hidden=16, dropout=0.0)
        loss = head(net.forward_features(pos, x), torch.tensor([0, 1])).logsumexp(-1).sum()
    loss.backward()
    for name, p in [*net.named_parameters(), *head.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_one_local_stage_on_100k_points() -> None:
    """100 000 → 25 000 centroids, k = 16, width 32, local mode: runs in memory (times printed with -s).

    Prefix seeds (what the data side's FPS order makes free); the cloud is random, so here they are random.
    """
    torch.manual_seed(0)
    stage = CentroidStage(16, 32, 25_000, StageSettings(k=16, heads=2), sampling="prefix").eval()
    pos, x = _cloud(1, 100_000, 10, 16)
    start = time.perf_counter()
    with torch.no_grad():
        out = stage(pos, x, return_attention=True)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\n100k-point local stage: {seconds:.1f} s forward, process peak RSS {peak_gib:.2f} GiB")
    assert out.feat.shape == (1, 25_000, 32) and torch.isfinite(out.feat).all()
    assert out.assignment.shape == (1, 100_000) and out.assignment.min() >= 0
    assert peak_gib < 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["local", "global"])
def test_cuda_matches_cpu(mode: str) -> None:
    torch.manual_seed(0)
    net = CentroidBackbone(in_channels=3, **small(mode=mode)).eval()
    head = SegmentationHead(net.channels, 4, hidden=16).eval()
    pos, x = _cloud(2, 64, 11, 3)
    with torch.no_grad():
        cpu = head(net.forward_features(pos, x))
        gpu = head.cuda()(net.cuda().forward_features(pos.cuda(), x.cuda()))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_step_matches_cpu() -> None:
    """One training step on the GPU (chunked kernels, gathered neighbour sums) against the CPU (sparse kernels):
    output, every gradient and the BatchNorm running statistics, in float32; then the same step runs under
    bf16 autocast."""
    pos, x = _cloud(3, 96, 37, 4)
    results = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        net = CentroidBackbone(4, **small(layer_scale=0.5, normalize_offsets=True)).to(device)
        out = net(pos.to(device), x.to(device))
        (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum().backward()
        results.append([t.detach().cpu() for t in (out, *(p.grad for p in net.parameters()), *net.buffers())])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(pos.cuda(), x.cuda())
    out.float().sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trains_with_two_million_centroids_in_a_batch() -> None:
    """B·M = 2²¹ first-stage centroids (batch 256 × 8192): far past the 65 535 limit of a kernel grid's batch
    dimension that a per-centroid SDPA call hit. Forward and backward under bf16 autocast run and stay finite."""
    torch.manual_seed(0)
    b, n = 256, 16384
    net = CentroidBackbone(3, stem_width=16, num_centroids=[n // 2, n // 8, n // 32], widths=[16, 16, 16],
                           stage=StageSettings(k=8, heads=2), sampling="prefix").cuda()
    pos = torch.rand(b, n, 3, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(pos, pos)
    out.float().square().mean().backward()
    assert out.shape == (b, n // 32, 16) and torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_prefix_seeds_of_an_fps_ordered_cloud_equal_fps_at_every_stage() -> None:
    """FPS's prefix property: one data-side order gives every stage's FPS seeds (started at the same point)."""
    pos, _ = _cloud(3, 256, 30)
    ordered = torch.stack([p[torch.from_numpy(fps_order(p.numpy()))] for p in pos])
    net = CentroidBackbone(sampling="prefix", **small()).eval()
    out = net.forward_features(ordered)
    inputs = ordered
    for stage, m in zip(out.stages, SMALL["num_centroids"]):
        start = torch.zeros(3, dtype=torch.long)  # the order's first point, where the data side started
        fps = farthest_point_sample(inputs, m, method="exact", start=start)
        assert torch.equal(fps, torch.arange(m).expand(3, m))  # per-stage FPS = the prefix
        assert torch.equal(stage.seed_idx, fps) and torch.equal(stage.pos, inputs[:, :m])
        inputs = stage.pos
    # the first stage's prefix is also exactly the model's own order-independent FPS of the raw cloud
    assert torch.equal(ordered[:, :32], torch.stack([p[i] for p, i in zip(pos, farthest_point_sample(pos, 32))]))


def test_default_sampling_is_exact_fps_in_stage_one_and_its_prefixes_after() -> None:
    """sampling="fps": stage 1 runs the model's exact FPS, later stages take prefixes, which equal their own FPS."""
    pos, _ = _cloud(3, 256, 31)
    net = CentroidBackbone(**small()).eval()
    assert [s.sampling for s in net.stages] == ["fps", "prefix", "prefix"]
    out = net.forward_features(pos)
    assert torch.equal(out.stages[0].seed_idx, farthest_point_sample(pos, 32, method="exact"))
    inputs = out.stages[0].pos
    for stage, m in zip(out.stages[1:], SMALL["num_centroids"][1:]):
        start = torch.zeros(3, dtype=torch.long)  # stage 1's order starts at its first seed
        assert torch.equal(farthest_point_sample(inputs, m, method="exact", start=start), stage.seed_idx)
        inputs = stage.pos


def test_default_sampling_gives_the_same_features_for_any_point_order() -> None:
    pos, _ = _cloud(2, 256, 32)
    net = CentroidBackbone(**small(layer_scale=0.1)).eval()
    sorted_x = pos.gather(1, pos[..., :1].argsort(1).expand(-1, -1, 3))  # sorted along x
    shuffled = pos[:, torch.randperm(256, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        ref = net(pos)
        for other in (sorted_x, shuffled):
            torch.testing.assert_close(net(other), ref, rtol=0, atol=1e-5)
        prefix = CentroidBackbone(sampling="prefix", **small(layer_scale=0.1)).eval()
        prefix.load_state_dict(net.state_dict())
        assert (prefix(sorted_x) - ref).abs().max() > 1e-2  # the prefix contract broken: other seeds


def test_normalized_offsets_make_a_stage_scale_invariant() -> None:
    torch.manual_seed(0)
    pos, x = _cloud(2, 64, 31, 8)
    for mode in ("local", "global"):
        stage = CentroidStage(8, 16, 16, StageSettings(k=6, heads=2, mode=mode, normalize_offsets=True)).eval()
        torch.testing.assert_close(stage(pos * 7.0, x).feat, stage(pos, x).feat, rtol=1e-4, atol=1e-5)
        plain = CentroidStage(8, 16, 16, StageSettings(k=6, heads=2, mode=mode)).eval()
        assert not torch.allclose(plain(pos * 7.0, x).feat, plain(pos, x).feat, atol=1e-3)


@pytest.mark.parametrize("mode", ["local", "global"])
def test_backbone_trains_under_bf16_autocast_on_cpu(mode: str) -> None:
    torch.manual_seed(0)
    net = CentroidBackbone(sampling="prefix", **small(mode=mode, layer_scale=0.1, normalize_offsets=True))
    head = ClassificationHead(net.out_channels, 5)
    pos, _ = _cloud(2, 64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(net.forward_features(pos))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    logits.float().logsumexp(-1).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pure_half_precision_model_trains_and_infers_like_float32(dtype: torch.dtype) -> None:
    """Every parameter and input in half precision (Lightning's ``precision: bf16-true`` / ``16-true``,
    ``model.half()``), the default BatchNorm KNN init: training forward and backward and eval inference run in
    that dtype and stay within half-precision rounding of the float32 model with the same (rounded) weights and
    positions
    (the fused pool returned float32 before: a dtype mismatch at the next linear map)."""
    torch.manual_seed(0)
    half = CentroidBackbone(sampling="prefix", **small(layer_scale=0.1)).to(dtype)
    net = copy.deepcopy(half).float()  # the same (rounded) weights
    pos = torch.rand(2, 64, 3).to(dtype)

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.float() - b).norm() / b.norm()).item()

    out, want = half(pos), net(pos.float())
    assert out.dtype == dtype and error(out, want) < 0.05
    out.float().square().mean().backward()
    want.square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in half.parameters())
    grads = [torch.cat([p.grad.flatten().float() for p in m.parameters()]) for m in (half, net)]
    assert error(*grads) < 0.25  # measured 0.10-0.15 (bf16), 0.006-0.04 (fp16): rounding through every layer
    half.eval(), net.eval()
    with torch.no_grad():
        out, want = half(pos), net(pos.float())
    assert out.dtype == dtype and error(out, want) < 0.05


@pytest.mark.slow
def test_forward_and_backward_trace_as_one_graph_for_torch_compile() -> None:
    """No host syncs or data-dependent shapes on the hot path: the whole model is one graph (fullgraph=True).

    ``aot_eager`` traces forward and backward without generating kernels, so this runs in seconds on CPU.
    """
    torch.manual_seed(0)
    net = CentroidBackbone(sampling="prefix", **small(layer_scale=0.1, normalize_offsets=True))
    head = ClassificationHead(net.out_channels, 5)
    net.eval(), head.eval()  # no dropout: eager and compiled must agree exactly

    def logits(pos: torch.Tensor) -> torch.Tensor:
        return head(net.forward_features(pos))

    pos, _ = _cloud(2, 64, 33)
    out = torch.compile(logits, fullgraph=True, backend="aot_eager")(pos)
    torch.testing.assert_close(out, logits(pos), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None for p in [*net.parameters(), *head.parameters()])


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_knn_init_equals_its_formula_in_float64(norm: str) -> None:
    """The fused KNN max-pool (layers = 1) = max_j N(W_x x_j + W_p (p_j − p_i)), forward and backward."""
    torch.manual_seed(34)
    init = KNNInit(5, 8, norm=norm).double()
    with torch.no_grad():
        for p in init.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 30, 5, dtype=torch.float64, requires_grad=True)
    points, centres = torch.randn(2, 30, 3, dtype=torch.float64), torch.randn(2, 7, 3, dtype=torch.float64)
    nbr = torch.randint(0, 30, (2, 7, 4))
    fused = init(x, points, centres, nbr)
    fused.square().sum().backward()
    got = [x.grad.clone(), *(p.grad.clone() for p in init.parameters())]
    x.grad = None
    init.zero_grad()
    rel = torch.stack([points[b, nbr[b]] for b in range(2)]) - centres.unsqueeze(2)  # p_j − p_i, (B, M, k, 3)
    z = torch.stack([init.embed_x(x)[b, nbr[b]] for b in range(2)]) + init.embed_pos(rel)  # (B, M, k, C)
    normed = init.norm(z) if norm == "layer" else init.norm(z.reshape(-1, 8)).view(z.shape)
    plain = normed.amax(dim=2)
    plain.square().sum().backward()
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, [x.grad, *(p.grad for p in init.parameters())]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)



@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_two_layer_knn_init_equals_pointnet2_set_abstraction_in_float64(norm: str) -> None:
    """layers = 2: max_j W_h ReLU(N(W_x x_j + W_p (p_j − p_i))) + b_h, PointNet++'s per-pair MLP then max."""
    torch.manual_seed(35)
    init = KNNInit(5, 8, layers=2, norm=norm).double()
    x = torch.randn(2, 30, 5, dtype=torch.float64)
    points, centres = torch.randn(2, 30, 3, dtype=torch.float64), torch.randn(2, 7, 3, dtype=torch.float64)
    nbr = torch.randint(0, 30, (2, 7, 4))
    rel = torch.stack([points[b, nbr[b]] for b in range(2)]) - centres.unsqueeze(2)
    pairs = torch.cat([torch.stack([x[b, nbr[b]] for b in range(2)]), rel], dim=-1)  # [x_j, p_j − p_i]
    weight = torch.cat([init.embed_x.weight, init.embed_pos.weight], dim=1)  # one linear map of the pair
    z = pairs @ weight.T + init.embed_x.bias
    normed = init.norm(z) if norm == "layer" else init.norm(z.reshape(-1, 8)).view(z.shape)
    expected = (torch.relu(normed) @ init.hidden[1].weight.T + init.hidden[1].bias).amax(dim=2)
    torch.testing.assert_close(init(x, points, centres, nbr), expected, rtol=1e-12, atol=1e-12)


def test_recomputed_stage_gives_the_same_output_and_gradients() -> None:
    pos, x = _cloud(2, 64, 35, 8)
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        # dropout: the same RNG replayed
        stage = CentroidStage(8, 16, 16, StageSettings(k=6, heads=2, dropout=0.2, recompute=recompute))
        out = stage(pos, x).feat
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in stage.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("layers", [1, 2])
def test_recompute_updates_the_running_statistics_once(layers: int) -> None:
    """One training step with ``recompute=True``: running mean, variance and batch count as without it (the
    recomputation in backward updated them a second time before)."""
    pos, x = _cloud(2, 64, 37, 8)
    buffers = []
    for recompute in (False, True):
        torch.manual_seed(0)
        stage = CentroidStage(8, 16, 16, StageSettings(k=6, heads=2, init_layers=layers, recompute=recompute))
        stage(pos, x).feat.square().sum().backward()
        buffers.append(list(stage.buffers()))
    assert len(buffers[0]) == 3 and int(buffers[1][2]) == 1  # one BatchNorm: mean, variance, count
    for a, b in zip(*buffers, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("layers", [1, 2])
def test_batch_norm_knn_init_runs_differs_and_uses_running_statistics_in_eval(layers: int) -> None:
    """One layer is the default, fused path (models.pairs.knn_batchnorm_max_pool; only the two-layer one, in
    autograd, was tested before); two layers the BatchNorm1d modules."""
    pos, _ = _cloud(3, 64, 35)
    outs = {}
    for norm in ("layer", "batch"):
        torch.manual_seed(0)
        net = CentroidBackbone(**small(init_norm=norm, init_layers=layers))
        outs[norm] = net(pos)
        assert outs[norm].shape == (3, 8, 32) and torch.isfinite(outs[norm]).all()
    assert not torch.allclose(outs["layer"], outs["batch"])
    init = net.stages[0].init
    assert isinstance(init.norm, torch.nn.BatchNorm1d) and (init.hidden is None) == (layers == 1)
    assert int(init.norm.num_batches_tracked) == 1  # statistics over the B·M·k pairs of the training batch
    assert not torch.equal(init.norm.running_mean, torch.zeros_like(init.norm.running_mean))
    net.eval()
    with torch.no_grad():  # eval: running statistics, so a cloud's output does not depend on its batch
        torch.testing.assert_close(net(pos)[:1], net(pos[:1]), rtol=1e-5, atol=1e-6)
    assert int(init.norm.num_batches_tracked) == 1


@pytest.mark.parametrize("layers", [1, 2])
def test_sync_batch_norm_on_one_process_is_the_batch_norm(layers: int) -> None:
    """Lightning's ``sync_batchnorm`` swaps each BatchNorm1d for a SyncBatchNorm; on one process it must compute
    the same function: output, gradients and running statistics (it took the LayerNorm path before: max
    difference 1.3, running statistics never updated)."""
    torch.manual_seed(36)
    plain = KNNInit(5, 8, layers=layers, norm="batch").double()
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    assert isinstance(synced.norm, torch.nn.SyncBatchNorm)
    x, points, centres = (torch.randn(2, n, c, dtype=torch.float64) for n, c in [(30, 5), (30, 3), (7, 3)])
    nbr = torch.randint(0, 30, (2, 7, 4))
    outs = [init(x, points, centres, nbr) for init in (plain, synced)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(out.square().sum(), list(init.parameters()))
             for out, init in zip(outs, (plain, synced))]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(plain.buffers(), synced.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert int(synced.norm.num_batches_tracked) == 1
    plain.eval(), synced.eval()
    with torch.no_grad():
        want = plain(x, points, centres, nbr)
        torch.testing.assert_close(synced(x, points, centres, nbr), want, rtol=1e-12, atol=1e-12)


def test_knn_init_defaults_to_batch_norm() -> None:
    net = CentroidBackbone(**small())
    assert all(isinstance(stage.init.norm, torch.nn.BatchNorm1d) for stage in net.stages)
    assert isinstance(CentroidBackbone(**small(init_norm="layer")).stages[0].init.norm, torch.nn.LayerNorm)


def test_init_options_are_validated() -> None:
    with pytest.raises(ValueError, match="norm='group'"):
        CentroidBackbone(**small(init_norm="group"))
    with pytest.raises(ValueError, match="layers=3"):
        CentroidBackbone(**small(init_layers=3))


@pytest.mark.parametrize("mode", ["local", "global"])
def test_rows_in_locality_order_change_nothing(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage runs its per-pair work with centroids in Z-order and undoes it: same features, attention,
    assignment and gradients as in the seeds' own order (float64)."""
    pos, x = _cloud(2, 48, 36, 8)
    pos, x = pos.double(), x.double().requires_grad_()
    runs = []
    for identity in (False, True):
        if identity:
            identity_order = lambda p: torch.arange(p.shape[1]).expand(p.shape[0], -1)  # noqa: E731 -- a one-line stand-in
            monkeypatch.setattr("models.backbone.locality_order", identity_order)
        torch.manual_seed(0)
        stage = CentroidStage(8, 16, 12, StageSettings(k=5, heads=2, mode=mode)).double()
        out = stage(pos, x, return_attention=True)
        (grad,) = torch.autograd.grad(out.feat.square().sum(), x)
        runs.append((out.feat, out.attention, out.assignment, grad))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_locality_order_is_a_permutation_that_keeps_neighbours_close() -> None:
    from models.spatial import locality_order

    pos = torch.stack([torch.from_numpy(p) for p in np.random.default_rng(0).random((2, 500, 3))]).float()
    order = locality_order(pos)
    assert torch.equal(order.sort(dim=1).values, torch.arange(500).expand(2, -1))
    walk = lambda p: (p[:, 1:] - p[:, :-1]).norm(dim=-1).mean()  # noqa: E731 -- mean step along the order
    assert walk(_rows_of(pos, order)) < 0.3 * walk(pos)


def test_locality_order_sorts_by_the_interleaved_bits_of_the_cells() -> None:
    """The spread-bits code equals its definition: bit i of axis a at bit 3i + a, for every cell index."""
    from models.spatial import locality_order

    pos = torch.rand(3, 700, 3, dtype=torch.float64)
    pos[0, :3] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])  # the extreme cells 0 and 1023
    lo, hi = pos.amin(1, keepdim=True), pos.amax(1, keepdim=True)
    cells = ((pos - lo) / (hi - lo) * 1023).round().long()
    code = sum(((cells[..., a] >> i) & 1) << (3 * i + a) for i in range(10) for a in range(3))
    assert torch.equal(locality_order(pos), torch.argsort(code, dim=1, stable=True))


def _rows_of(pos: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return torch.stack([p[o] for p, o in zip(pos, order)])


@pytest.mark.parametrize("kernel", ["gathered", "chunked",
                                    pytest.param("triton", marks=pytest.mark.skipif(not TRITON, reason="no Triton"))])
def test_every_kernel_gives_the_csr_kernels_model_in_float64(kernel: str) -> None:
    """The CPU's sparse kernels (models.pairs.csr) against each other kernel: a training step of the whole
    backbone, BatchNorm statistics included, forward, every gradient and running statistics."""
    pos, x = _cloud(2, 64, 36, 4)
    pos, x = pos.double(), x.double()
    results = []
    for name in ("csr", kernel):
        torch.manual_seed(0)
        net = CentroidBackbone(4, **small(layer_scale=0.5, normalize_offsets=True, kernel=name)).double()
        out = net(pos, x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), [p.grad for p in net.parameters()], [b.clone() for b in net.buffers()]))
    (out_a, grads_a, bufs_a), (out_b, grads_b, bufs_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_a + bufs_a, grads_b + bufs_b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
