"""The verdicts of ``python -m benchmarks``: the issue's targets, each met / within noise / not met / not measured."""

from __future__ import annotations

import math

from benchmarks.config import Config
from benchmarks.experiments import REFERENCE
from benchmarks.harness import RATIOS, loglog_slope


def speed_verdict(slow: dict, fast: dict, goal: float, key: str = "train_range_ms") -> tuple[str, str]:
    """Whether ``fast`` is ``goal``× faster than ``slow`` across the spread of their timed runs: ``met`` when even
    the slowest run of ``fast`` against the fastest of ``slow`` clears it, ``within noise`` when only the medians
    do, ``not met`` otherwise. Returns the verdict and the ratios' text (median, and worst case in brackets)."""
    median = slow["train_ms"] / fast["train_ms"]
    if slow.get(key) and fast.get(key):
        worst = slow[key][0] / fast[key][1]
        verdict = "met" if worst >= goal else "within noise" if median >= goal else "not met"
        return verdict, f"{median:.2f}× (worst pair of runs {worst:.2f}×)"
    return ("met" if median >= goal else "not met"), f"{median:.2f}× (one timing: no spread)"


def _inference_verdict(slow: dict, fast: dict, goal: float) -> tuple[str, str]:
    """:func:`speed_verdict` on two cells' inference throughput (samples/s and their spread)."""
    def as_time(cell: dict) -> dict:
        return {"train_ms": 1 / cell["infer_sps"], "range": _inverse(cell.get("infer_range_sps"))}

    return speed_verdict(as_time(slow), as_time(fast), goal, key="range")


def _inverse(sps_range: list[float] | None) -> list[float] | None:
    """A ``[slowest, fastest]`` samples/s range as ``[fastest, slowest]`` seconds per sample."""
    return [1 / sps_range[1], 1 / sps_range[0]] if sps_range else None


def _memory_ratios(cell: dict, baseline: dict) -> tuple[float, float]:
    """``cell``'s peak memory over ``baseline``'s: resident size, and live tensors (``inf`` where not measured)."""
    def ratio(key: str) -> float:
        a, b = cell.get(key), baseline.get(key)
        return a / max(b, 1e-9) if a is not None and b is not None else math.inf

    return ratio("peak_mib"), ratio("tensor_peak_mib")


def _within_half(mem: float, tensors: float) -> bool:
    """Both measured memory ratios at most ½ (a ratio not measured, ``inf``, is left out)."""
    measured = [r for r in (mem, tensors) if math.isfinite(r)]
    return bool(measured) and max(measured) <= 0.5


def _memory_text(mem: float, tensors: float) -> str:
    text = f", {mem:.2f}× its peak resident memory"
    return text + (f" and {tensors:.2f}× its tensors' peak" if math.isfinite(tensors) else "")


def targets(models: dict, variants: dict, cfg: Config) -> list[str]:
    """The issue's targets, each met / not met / not measured, with the numbers (default backbone first, then
    the variants that meet what the default does not)."""
    ref = models.get(REFERENCE, {})
    gpu = cfg.device.startswith("cuda")
    lines = []
    c4, f4 = ref.get(4096, {}), models.get("full_attention", {}).get(4096, {})
    if c4.get("train_ms") and f4.get("train_ms"):
        (speed, speed_txt), (mem, tensors) = speed_verdict(f4, c4, 4.0), _memory_ratios(c4, f4)
        verdict = speed if gpu or _within_half(mem, tensors) else "not met"
        mem_goal, mem_txt = ("", "") if gpu else (" and ≤ ½ of its peak memory", _memory_text(mem, tensors))
        lines.append(f"- N = 4096, centroid training step ≥ 4× faster than full attention{mem_goal}: "
                     f"**{verdict}** ({speed_txt} faster{mem_txt}).")
    else:
        why = f4.get("error") or c4.get("error") or "not measured"
        lines.append(f"- N = 4096 speed/memory against full attention: **not measured** ({why}).")
    for name, cells in variants.items():  # like for like: both models at the variant's schedule and T
        model, _, variant = name.rpartition("@")
        c, f = variants.get(variant, {}).get(4096, {}), cells.get(4096, {})
        if model == "full_attention" and c.get("train_ms") and f.get("train_ms"):
            speed, (mem, tensors) = f["train_ms"] / c["train_ms"], _memory_ratios(c, f)
            ok = speed >= 4 and (gpu or _within_half(mem, tensors))
            lines.append(f"  - both at {variant}: **{'met' if ok else 'not met'}** ({speed:.2f}× faster"
                         + ("" if gpu else _memory_text(mem, tensors)) + ").")
    recompute = next((cells for name, cells in variants.items() if name.startswith("recompute")), {})
    rc4 = recompute.get(4096, {})
    if not gpu and rc4.get("train_ms") and f4.get("train_ms"):  # the memory option against the default baseline
        speed, (mem, tensors) = f4["train_ms"] / rc4["train_ms"], _memory_ratios(rc4, f4)
        ok = speed >= 4 and _within_half(mem, tensors)
        lines.append(f"  - centroid with `recompute: true`: **{'met' if ok else 'not met'}** ({speed:.2f}× faster"
                     f"{_memory_text(mem, tensors)}).")
    c1 = ref.get(1024, {})
    p1, f1 = models.get("pointnet2", {}).get(1024, {}), models.get("full_attention", {}).get(1024, {})
    if gpu and c1.get("train_ms") and p1.get("train_ms") and f1.get("train_ms"):
        vs_full, vs_pn = f1["train_ms"] / c1["train_ms"], p1["train_ms"] / c1["train_ms"]
        sps = cfg.batch / c1["train_ms"] * 1e3
        lines.append(f"- GPU, N = 1024, batch {cfg.batch}: training samples/s ≥ 2× full attention and ≥ PointNet++ "
                     f"(aim 1.5×): **{'met' if vs_full >= 2 and vs_pn >= 1 else 'not met'}** ({sps:.0f} samples/s; "
                     f"{vs_full:.2f}× full attention, {vs_pn:.2f}× PointNet++).")
    if gpu and c1.get("kernel_frac") is not None:
        frac = c1["kernel_frac"]
        lines.append("- GPU, N = 1024: kernel time ≥ 80 % of the step's wall time: "
                     f"**{'met' if frac >= 0.8 else 'not met'}** "
                     f"(GPU busy {100 * frac:.0f} % of a fwd+bwd step).")
    if gpu:
        ran = [cfg.batch * n // RATIOS[0] for n, r in ref.items() if not r.get("error")]
        failed = [f"N = {n}: {r['error'][:80]}" for n, r in ref.items() if r.get("error")]
        lines.append(f"- GPU, no failure up to B·M = 2²¹: largest B·M (batch × first-stage centroids) run here "
                     f"{max(ran, default=0):,}; failed cells: {'; '.join(failed) or 'none'}. The kernels at "
                     "B·M = 2²¹ are run by `pytest -m gpu` (tests/models/test_backbone.py).")
    if c1.get("infer_sps") and p1.get("infer_sps"):
        verdict, ratio = _inference_verdict(p1, c1, 1.0)
        lines.append(f"- Inference at N = 1024 ≥ PointNet++ SSG (aim 1.5×): **{verdict}** "
                     f"({c1['infer_sps']:.1f} vs {p1['infer_sps']:.1f} samples/s, {ratio}).")
    else:
        lines.append("- Inference at N = 1024 against PointNet++: **not measured**.")
    for name, cells in variants.items():  # like for like: PointNet++ at the variant's schedule
        model, _, variant = name.rpartition("@")
        c, p = variants.get(variant, {}).get(1024, {}), cells.get(1024, {})
        if model == "pointnet2" and c.get("infer_sps") and p.get("infer_sps"):
            verdict, ratio = _inference_verdict(p, c, 1.5)
            lines.append(f"  - centroid at {variant}, ≥ 1.5×: **{verdict}** ({c['infer_sps']:.1f} vs "
                         f"{p['infer_sps']:.1f} samples/s, {ratio}).")
    if not gpu:  # a CPU target
        lines.append(_slope_target(ref))
    for how, cells in (("default", ref), ("`recompute: true`", recompute)):
        big = cells.get(131072)
        if big is None or gpu:
            continue
        if big.get("error"):
            lines.append(f"- 131 072 points, batch {cfg.batch}, under 12 GiB ({how}): **not met** "
                         f"({big['error'][:100]}).")
        else:
            lines.append(f"- 131 072 points, batch {cfg.batch}, under 12 GiB ({how}): "
                         f"**{'met' if big['peak_mib'] < 12 * 1024 else 'not met'}** "
                         f"(peak {big['peak_mib'] / 1024:.1f} GiB, fwd+bwd {big['train_ms'] / 1e3:.1f} s).")
    if not gpu:
        lines.append("- GPU targets (no failure up to B·M = 2²¹, batch-128 training throughput, kernel time ≥ 80 % of "
                     "the step): not part of a CPU run (`--device cuda`; see *GPU run* where there is one).")
    return lines


def _slope_target(ref: dict) -> str:
    local = [(n, r["train_ms"]) for n, r in ref.items() if not r.get("error") and 4096 <= n <= 65536]
    slope = loglog_slope([n for n, _ in local], [t for _, t in local])
    if slope is None:
        return "- Local mode slope from 4k to 64k: **not measured** (needs two sizes ≥ 4096)."
    tried = max((n for n in ref if n <= 65536), default=0)
    verdict = "met" if slope <= 1.1 else "not met"
    if local[-1][0] < tried:
        verdict = f"not verified up to N = {tried}; {verdict} up to N = {local[-1][0]}"
    return (f"- Local mode slope ≤ 1.1 from 4k to 64k: **{verdict}** "
            f"(slope {slope:.3f} over N = {local[0][0]}–{local[-1][0]}).")
