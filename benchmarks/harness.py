"""Measurement of one benchmark cell, run in its own subprocess (``python -m benchmarks.harness '<json>'``).

A cell is one model (or one neighbour-search op) at one N. Running each cell in a fresh process makes its
peak memory honest and isolates failures: the parent (``benchmarks.runner``) caps the child's address space
(an out-of-memory cell fails with an error instead of taking the machine down) and its wall time, and
records a skip with the reason.

What is measured:
- ``train_ms``: median wall time of one training step — forward (the model's own sampling included) +
  cross-entropy + backward + AdamW step — of one batch, after one warm-up (two on CUDA).
- ``infer_sps``: samples per second of ``torch.inference_mode`` forward passes (median batch time).
- ``peak_mib``: CPU — the increase of the process's peak resident set size (``ru_maxrss``) over the
  resident size just before the first step: everything the forward + backward allocated (activations,
  gradients, workspaces, allocator slack) at its high-water mark. CUDA — ``torch.cuda.max_memory_allocated``
  over what was allocated before the first step (exact; cells then run in one process, see benchmarks.runner).
- ``tensor_peak_mib``: the peak of live tensor bytes during one fwd+bwd step over those live at its start,
  without the allocator's slack: CUDA — ``peak_mib``; CPU — summed from the allocator's events that
  ``torch.profiler`` records (``profile_memory``) in one more, profiled step (:func:`tensor_peak_mib`). The
  resident size also holds freed memory the C allocator keeps and its fragmentation, which depend on the
  order and sizes of allocations, not on how much the model keeps alive.
- ``kernel_frac`` (CUDA only): GPU busy time of one profiled fwd+bwd step (the union of its kernels' and
  copies' intervals, ``torch.profiler``) over the median unprofiled step time. Near 1: the GPU never waits;
  far below: the step is bound by Python and kernel launches.
- ``gflops``: forward FLOPs per sample (2 × MACs) counted by ``torch.utils.flop_counter.FlopCounterMode``:
  every matmul and attention kernel (SDPA forced onto its math kernel while counting); gathers, scatters,
  sorts, elementwise ops and the neighbour search count zero.

Inputs are surface-like clouds in random point order, and every model samples its own seeds inside the timed
step (``sampling="fps"``: exact FPS in the first stage, its prefixes after). ``sampling="prefix"`` cells get
the clouds in farthest-point order instead, ordered outside the clock (the contract of data ordered offline).
The in-model kNN/FPS and the data side's ordering are also timed on their own as ops.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.baselines import DGCNN, Classifier, FullAttentionBackbone, PointNet2SSG, PointNet2SSGBall
from benchmarks.fit_timer import busy_seconds
from datamodules.sampling import fps_order
from datamodules.transforms import FPSOrder
from models.backbone import CentroidBackbone, StageSettings
from models.flops import count_parameters, gathered_kernels
from models.heads import ClassificationHead
from models.ops import farthest_point_sample, knn

# name -> (label, backbone factory(in_channels, num_centroids, widths, steps, sampling)); all at stem 64, widths
# 128/256/512, k 16, 4 heads, except the published PointNet++ (its own widths, ball query, seeds N/2 and N/8 of the
# schedule); every model picks its seeds the same way (``sampling``).
Factory = Callable[..., nn.Module]
MODELS: dict[str, tuple[str, Factory]] = {
    "centroid_local": ("Centroid (local)", lambda c, m, w, t, s, **kw:
                       CentroidBackbone(c, w[0], m, w[1:], StageSettings(mode="local", steps=t, **kw), s)),
    "centroid_global": ("Centroid (global)", lambda c, m, w, t, s, **kw:
                        CentroidBackbone(c, w[0], m, w[1:], StageSettings(mode="global", steps=t, **kw), s)),
    "full_attention": ("Full self-attention", lambda c, m, w, t, s, **kw:
                       FullAttentionBackbone(c, w[0], m, w[1:], steps=t, sampling=s, **kw)),
    "pointnet2": ("PointNet++ SSG", lambda c, m, w, t, s, **kw: PointNet2SSG(c, w[0], m, w[1:], sampling=s, **kw)),
    "pointnet2_ball": ("PointNet++ SSG, published", lambda c, m, w, t, s, **kw:
                       PointNet2SSGBall(c, [m[0], m[-1]], sampling=s, **kw)),
    "dgcnn": ("DGCNN", lambda c, m, w, t, s: DGCNN(c, w[0], m, w[1:], sampling=s)),
}
# Neighbour search and sampling per batch: kNN (k = 16) of M = N/2 queries among N points; FPS of N/2 in the
# model (the exact operator, and the torch reference loop); the data side's FPS order of every cloud (fpsample,
# in loader workers, one cloud at a time).
OPS = ("knn_auto", "knn_brute", "fps_auto", "fps_exact", "fps_order_data", "knn_torch_cluster", "fps_torch_cluster")
#: Default stage schedule: stage s keeps N / RATIOS[s] centroids (1024 → 512 → 256 → 128).
RATIOS = (2, 4, 8)
#: Stem width, then each stage's width (the centroid backbone's defaults).
WIDTHS = (64, 128, 256, 512)


def num_centroids(num_points: int, ratios: tuple[int, ...] | list[int] = RATIOS) -> list[int]:
    """The stage schedule ``[N / r_1, N / r_2, ...]`` (at least one centroid each)."""
    return [max(1, num_points // r) for r in ratios]


def build_classifier(
    name: str,
    num_points: int,
    num_classes: int,
    in_channels: int = 0,
    dropout: float = 0.0,
    ratios: tuple[int, ...] | list[int] = RATIOS,
    steps: int = 2,
    sampling: str = "fps",
    options: dict | None = None,
    widths: tuple[int, ...] | list[int] = WIDTHS,
) -> Classifier:
    """One benchmark model (backbone + the project's classification head) for clouds of ``num_points``.

    ``sampling``: ``"fps"`` (the model samples: exact FPS in the first stage, prefixes after) or ``"prefix"``
    (inputs in FPS order, see :func:`ordered`). ``options``: further keyword
    arguments of the centroid backbones' stage settings (``models.backbone.StageSettings``: e.g. ``layer_scale``,
    ``normalize_offsets``) or of the baselines. ``widths``: the stem
    width, then one width per stage.
    """
    backbone = MODELS[name][1](in_channels, num_centroids(num_points, ratios), list(widths), steps, sampling,
                               **(options or {}))
    return Classifier(backbone, ClassificationHead(backbone.out_channels, num_classes, dropout=dropout))


def ordered(pos: Tensor) -> Tensor:
    """Each cloud of ``[B, N, 3]`` in farthest-point order, as the data side's ``fps_order`` delivers it."""
    return torch.stack([FPSOrder()({"pos": p})["pos"] for p in pos.cpu()]).to(pos.device)


def ordered_surface_cloud(batch: int, num_points: int) -> Tensor:
    """:func:`surface_cloud` in farthest-point order, cached on disk: the exact order is O(N²) on the data side
    (minutes per batch from N = 65 536 on), and every model and variant at one N times the same clouds."""
    path = Path(tempfile.gettempdir()) / "centroid-benchmark-clouds" / f"surface-{batch}x{num_points}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    pos = ordered(surface_cloud(batch, num_points))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(pos, partial)
    partial.replace(path)  # atomic: concurrent cells never read half a file
    return pos


def surface_cloud(batch: int, num_points: int, seed: int = 0) -> Tensor:
    """Deterministic surface-like clouds (noisy anisotropic ellipsoids), ``[B, N, 3]`` in about [-1, 1]³.

    Benchmark inputs lie on surfaces like real scans, which matters for the grid kNN.
    """
    g = torch.Generator().manual_seed(seed)
    p = F.normalize(torch.randn(batch, num_points, 3, generator=g), dim=-1)
    p = p * torch.tensor([1.0, 0.6, 0.3]) + 0.01 * torch.randn(batch, num_points, 3, generator=g)
    return p


@dataclass
class CellSpec:
    """One cell: a model name from ``MODELS`` or an op from ``OPS``, at ``num_points`` and ``batch``."""

    name: str
    num_points: int
    batch: int
    repeats: int = 5
    budget_s: float = 60.0  # repeats are cut so that the timed runs fit into about this many seconds
    threads: int = 0  # 0: torch's default
    device: str = "cpu"
    flops: bool = True
    compile: bool = False
    ratios: list[int] = field(default_factory=lambda: list(RATIOS))  # stage schedule N / r
    steps: int = 2  # T of the attention models
    sampling: str = "fps"  # seeds: exact FPS in the model, or "prefix" of inputs ordered outside the clock
    options: dict = field(default_factory=dict)  # further backbone keyword arguments (centroid variants)
    widths: list[int] = field(default_factory=lambda: list(WIDTHS))  # stem, then one width per stage
    min_repeats: int = 5  # timed runs at least, whatever the budget: every ratio and verdict needs a spread


@dataclass
class CellResult:
    spec: CellSpec
    train_ms: float | None = None
    infer_sps: float | None = None
    peak_mib: float | None = None
    tensor_peak_mib: float | None = None
    gflops: float | None = None
    params: int | None = None
    op_ms: float | None = None
    repeats: int = 0
    kernel_frac: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    train_range_ms: list[float] | None = None  # [fastest, slowest] of the timed steps
    infer_range_sps: list[float] | None = None  # [slowest, fastest] of the timed inference batches
    op_range_ms: list[float] | None = None


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(
    fn: Callable[[], object], device: str, repeats: int, budget_s: float, min_repeats: int = 1
) -> tuple[float, int, list[float]]:
    """Median seconds of ``fn`` after one warm-up (two on CUDA, whose first call in a process also creates the
    library handles), the number of timed runs and their ``[min, max]``; repeats capped so they fit ``budget_s``,
    but never fewer than ``min_repeats``."""
    for _ in range(2 if device.startswith("cuda") else 1):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        warm = time.perf_counter() - t
    n = max(1, min_repeats, min(repeats, int(budget_s / max(warm, 1e-9))))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), n, [min(times), max(times)]


def gpu_busy_s(fn: Callable[[], object]) -> float:
    """Seconds the GPU spends busy during one call of ``fn``: the union of its kernel and copy intervals
    (overlapping kernels count once), from ``torch.profiler``."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return busy_seconds(prof)


def tensor_peak_mib(fn: Callable[[], object]) -> float:
    """MiB of the peak of live CPU tensor bytes during one call of ``fn``, over those live at its start: the
    running sum of the allocations and frees ``torch.profiler`` records with ``profile_memory``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def _run_op(spec: CellSpec) -> CellResult:
    pos = surface_cloud(spec.batch, spec.num_points).to(spec.device)
    m = spec.num_points // 2
    query = pos[:, :m]
    if spec.name.endswith("torch_cluster"):
        import torch_cluster  # only present in a throwaway environment, never a dependency

        flat = pos.reshape(-1, 3)
        batch = torch.arange(spec.batch, device=pos.device).repeat_interleave(spec.num_points)
        qbatch = torch.arange(spec.batch, device=pos.device).repeat_interleave(m)
        fns = {
            "knn_torch_cluster": lambda: torch_cluster.knn(flat, query.reshape(-1, 3), 16, batch, qbatch),
            "fps_torch_cluster": lambda: torch_cluster.fps(flat, batch, ratio=0.5, random_start=False),
        }
    else:
        fns = {
            "fps_order_data": lambda: [fps_order(p) for p in pos.cpu().numpy()],
            "knn_auto": lambda: knn(query, pos, 16, method="auto"),
            "knn_brute": lambda: knn(query, pos, 16, method="brute"),
            "fps_auto": lambda: farthest_point_sample(pos, m, method="auto"),
            "fps_exact": lambda: farthest_point_sample(pos, m, method="exact"),
        }
    with torch.inference_mode():
        sec, n, spread = _timed(fns[spec.name], spec.device, spec.repeats, spec.budget_s, spec.min_repeats)
    return CellResult(spec, op_ms=sec * 1e3, repeats=n, op_range_ms=[t * 1e3 for t in spread])


def forward_gflops(model: nn.Module, *inputs: Tensor) -> float:
    """Forward GFLOPs (2 × MACs) of ``model(*inputs)``: every matmul and attention kernel counted, SDPA forced
    onto its math kernel (its fused CPU/GPU kernels are not all known to the counter), and the centroid models'
    per-pair work on the gathered kernel, whose products the counter sees (``models.flops.gathered_kernels``)."""
    with torch.no_grad(), gathered_kernels(model), FlopCounterMode(display=False) as counter, \
            sdpa_kernel(SDPBackend.MATH):
        model(*inputs)
    return counter.get_total_flops() / 1e9


def _run_model(spec: CellSpec) -> CellResult:
    torch.manual_seed(0)
    dev = spec.device
    cuda = dev.startswith("cuda")
    model = build_classifier(spec.name, spec.num_points, 40, ratios=spec.ratios, steps=spec.steps,
                             sampling=spec.sampling, options=spec.options, widths=spec.widths).to(dev)
    params = count_parameters(model)
    # "prefix": ordered outside the clock, the contract of data ordered offline
    cloud = ordered_surface_cloud if spec.sampling == "prefix" else surface_cloud
    pos = cloud(spec.batch, spec.num_points)
    pos = pos.to(dev)
    label = torch.arange(spec.batch, device=dev) % 40
    run = torch.compile(model) if spec.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)  # GPU path: bf16 autocast
    notes = []
    optimizer = torch.optim.AdamW(model.parameters())  # its state is part of the step's memory, as in training

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(run(pos), label)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.inference_mode(), autocast:
            run(pos)

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = _rss_mib()
    model.train()
    if spec.compile:  # the first call compiles: timed on its own, outside the steps
        t = time.perf_counter()
        step()
        _sync(dev)
        notes.append(f"compile + first step {time.perf_counter() - t:.1f} s")
    train_s, n, train_spread = _timed(step, dev, spec.repeats, spec.budget_s / 2, spec.min_repeats)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _peak_rss_mib() - rss0
    kernel_frac = gpu_busy_s(step) / train_s if cuda else None
    tensors = peak if cuda else tensor_peak_mib(step)
    model.eval()
    infer_s, _, infer_spread = _timed(infer, dev, spec.repeats, spec.budget_s / 2, spec.min_repeats)
    gflops = forward_gflops(model, pos[:1]) if spec.flops else None  # one extra forward on one cloud
    return CellResult(spec, train_s * 1e3, spec.batch / infer_s, peak, tensors, gflops, params, repeats=n,
                      kernel_frac=kernel_frac, notes=notes, train_range_ms=[t * 1e3 for t in train_spread],
                      infer_range_sps=[spec.batch / t for t in reversed(infer_spread)])


def run_cell(spec: CellSpec) -> CellResult:
    """Measure one cell in this process."""
    if spec.threads > 0:
        torch.set_num_threads(spec.threads)
    return _run_op(spec) if spec.name in OPS else _run_model(spec)


def error_text(e: BaseException) -> str:
    """A failed cell's note: the message on one line, cut to 160 characters (a compiler's first line alone,
    "backend='inductor' raised:", says nothing)."""
    return " ".join(str(e).split())[:160] or type(e).__name__


def loglog_slope(ns: list[int], times: list[float]) -> float | None:
    """Least-squares slope of log(time) against log(N); ``None`` with fewer than two points."""
    if len(ns) < 2:
        return None
    x = [math.log(n) for n in ns]
    y = [math.log(t) for t in times]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


def _main(arg: str) -> None:
    spec = CellSpec(**json.loads(arg))
    try:
        result = run_cell(spec)
    except (RuntimeError, MemoryError) as e:  # out-of-memory lands here (address-space cap set by the parent)
        msg = error_text(e)
        result = CellResult(spec, error=msg)
    print("RESULT " + json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1])
