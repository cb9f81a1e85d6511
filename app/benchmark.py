"""``python -m app.benchmark``: cost of centroid attention against its baselines, side by side, → BENCHMARKS.md.

Every cell (model × N, or neighbour-search op × N) runs in its own subprocess under an address-space cap
and a wall-time limit (see ``benchmarks/harness.py`` for what is measured and how); a cell that fails,
runs out of memory or would exceed the limit is reported as skipped with the reason, never a crash.
Then each model is trained briefly on the generated classification data and tested.

Full run (the one in BENCHMARKS.md): ``python -m app.benchmark --threads 1``; a tiny end-to-end run:
``python -m app.benchmark --quick --output /tmp/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.harness import MODELS, OPS, CellSpec, loglog_slope, run_cell
from benchmarks.training import TrainSpec, train_and_test

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "centroid_local"


@dataclass
class Config:
    """Sizes and limits of one benchmark run (``--quick`` shrinks all of them)."""

    sizes: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])
    local_sizes: list[int] = field(default_factory=lambda: [32768, 65536])  # extra sizes, local mode + ops
    models: list[str] = field(default_factory=lambda: list(MODELS))
    batch: int = 8
    repeats: int = 3
    cell_budget_s: float = 20.0  # timed repeats fit into about this
    cell_timeout_s: float = 150.0  # hard limit of one cell's subprocess
    mem_gib: float = 12.0  # address-space cap of one cell's subprocess
    threads: int = 0
    device: str = "cpu"
    compile: bool = False
    train_epochs: int = 12
    train_points: int = 256
    train_per_class: int = 40
    test_per_class: int = 10
    data_root: str = "data/benchmark_modelnet"
    torch_cluster_python: str | None = None
    isolate: bool = True  # one subprocess per cell (honest peak memory); False runs cells in this process


def quick_config(data_root: str) -> Config:
    """Tiny sizes for tests: runs end to end in well under a minute."""
    return Config(sizes=[128], local_sizes=[256], models=list(MODELS), batch=2, repeats=1, cell_budget_s=1.0,
                  cell_timeout_s=60.0, train_epochs=1, train_points=64, train_per_class=1, test_per_class=1,
                  data_root=data_root, isolate=False)  # fmt: skip


def run_child(module: str, payload: dict, cfg: Config, python: str | None = None) -> dict:
    """Run ``python -m module '<payload>'`` under the memory and time caps; its ``RESULT`` dict or an error.

    With ``cfg.isolate`` off the cell runs in this process instead (no caps; peak memory then includes
    what earlier cells left behind).
    """
    if not cfg.isolate:
        return _in_process(module, payload)

    def cap() -> None:
        limit = int(cfg.mem_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run(
            [python or sys.executable, "-m", module, json.dumps(payload)], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=cfg.cell_timeout_s, preexec_fn=cap if cfg.device == "cpu" else None,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"over the {cfg.cell_timeout_s:.0f} s cell limit"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
    return {"error": f"exit code {proc.returncode}: {tail}"}


def _in_process(module: str, payload: dict) -> dict:
    """The child's work without a child: same result dict, errors caught the same way."""
    if module == "benchmarks.harness":
        try:
            return asdict(run_cell(CellSpec(**payload)))
        except (RuntimeError, MemoryError) as e:
            return {"error": str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}
    try:
        return asdict(train_and_test(TrainSpec(**payload)))
    except Exception as e:  # noqa: BLE001 -- as in the child: a failed training is a row note
        return {"error": f"{type(e).__name__}: {str(e).strip()[:160]}"}


def _predicted_s(done: list[tuple[int, float]], n: int) -> float | None:
    """Seconds one timed step would take at ``n``, extrapolated from the last two (or one, as N²) sizes."""
    if not done:
        return None
    (n1, t1) = done[-1]
    slope = loglog_slope([n for n, _ in done[-2:]], [t for _, t in done[-2:]]) if len(done) > 1 else 1.5
    return t1 * (n / n1) ** max(slope or 1.5, 1.0)


def sweep(names: list[str], sizes_of: dict[str, list[int]], cfg: Config, key: str, python: str | None = None) -> dict:
    """Cells of ``names`` over their sizes, ascending; sizes past a failure or the time limit are skipped."""
    results: dict[str, dict[int, dict]] = {}
    for name in names:
        results[name], done, stop = {}, [], None
        for n in sizes_of[name]:
            guess = _predicted_s(done, n)
            if stop:
                results[name][n] = {"error": stop}
                continue
            # a cell takes about: warm-up step + timed budget + inference warm-up + FLOPs forward
            # (the reference model is always attempted: the cell limit still protects the run)
            if name != REFERENCE and guess is not None and 3 * guess + cfg.cell_budget_s > cfg.cell_timeout_s:
                stop = f"skipped: predicted {guess:.0f} s per step from smaller N exceeds the {cfg.cell_timeout_s:.0f} s limit"
                results[name][n] = {"error": stop}
                continue
            spec = CellSpec(name, n, cfg.batch, cfg.repeats, cfg.cell_budget_s, cfg.threads, cfg.device,
                            compile=cfg.compile)  # fmt: skip
            print(f"[benchmark] {name} N={n}", flush=True)
            res = run_child("benchmarks.harness", asdict(spec), cfg, python)
            results[name][n] = res
            print(f"[benchmark]   -> {res.get('error') or res.get('train_ms') or res.get('op_ms'):.6}", flush=True)
            if res.get("error"):
                stop = f"skipped: N={n} failed ({res['error']})"
                results[name][n]["error"] = res["error"]
            else:
                done.append((n, res[key] / 1e3))
    return results


def machine() -> str:
    """One line naming the CPU, cores, threads, torch and GPU."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads by default), "
            f"Python {platform.python_version()}, GPU: {gpu}")  # fmt: skip


def _f(x: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


def _ratio(x: float | None, ref: float | None) -> str:
    return "–" if x is None or not ref else f"{x / ref:.2f}×"


def render(cfg: Config, models: dict, ops: dict, train: dict, command: str) -> str:
    """The markdown report."""
    label = {k: v[0] for k, v in MODELS.items()}
    ref = models.get(REFERENCE, {})
    out = [
        "# Benchmarks", "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()}.", "",
        f"**Machine**: {machine()}. Threads used: {cfg.threads or torch.get_num_threads()}. Device: `{cfg.device}`.", "",
        "All models: stem 64, stage widths 128/256/512, centroids (or FPS seeds) N/2 → N/4 → N/8, k = 16 "
        "neighbours, 4 heads, T = 2 shared-weight steps, the project's classification head (40 classes). "
        f"Batch of {cfg.batch} surface-like clouds. Times are medians of up to {cfg.repeats} runs after one warm-up "
        "(fewer when a run is long, see `reps`); each cell runs in its own process.", "",
        "- **fwd+bwd**: forward + cross-entropy + backward of one batch. **infer**: samples/s of inference-mode "
        "forward passes. **peak MiB**: increase of the process's peak resident memory (`ru_maxrss`) over its "
        "size just before the first step — activations, gradients and allocator slack at the high-water mark "
        "of fwd+bwd (CUDA: `max_memory_allocated`). **GFLOPs**: forward FLOPs per sample from "
        "`torch.utils.flop_counter` (matmuls and attention only). Ratios are relative to the centroid backbone "
        "(local) at the same N.", "",
        "## Cost against N", "",
        "| model | N | fwd+bwd ms | × | infer samples/s | × | peak MiB | × | GFLOPs | params | reps | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for name, cells in models.items():
        for n, r in cells.items():
            rr = ref.get(n, {})
            if r.get("error"):
                out.append(f"| {label[name]} | {n} | – | – | – | – | – | – | – | – | – | {r['error']} |")
                continue
            out.append(
                f"| {label[name]} | {n} | {_f(r['train_ms'])} | {_ratio(r['train_ms'], rr.get('train_ms'))} | "
                f"{_f(r['infer_sps'])} | {_ratio(r['infer_sps'], rr.get('infer_sps'))} | {_f(r['peak_mib'], '{:.0f}')} | "
                f"{_ratio(r['peak_mib'], rr.get('peak_mib'))} | {_f(r['gflops'], '{:.2f}')} | {r['params']:,} | {r['repeats']} | |"
            )  # fmt: skip
    out += ["", "## Growth of fwd+bwd time with N (least-squares slope of log time against log N)", "",
            "| model | N range | slope |", "|---|---|---:|"]  # fmt: skip
    slopes = {}
    for name, cells in models.items():
        ok = [(n, r["train_ms"]) for n, r in cells.items() if not r.get("error")]
        s = loglog_slope([n for n, _ in ok], [t for _, t in ok])
        slopes[name] = s
        rng = f"{ok[0][0]}–{ok[-1][0]}" if ok else "–"
        out.append(f"| {label[name]} | {rng} | {_f(s, '{:.2f}')} |")
    local = [(n, r["train_ms"]) for n, r in models.get(REFERENCE, {}).items() if not r.get("error") and n >= 4096]
    local_slope = loglog_slope([n for n, _ in local], [t for _, t in local])
    out += ["", f"## Neighbour search and sampling (ms per batch of {cfg.batch}; kNN k = 16 of N/2 queries; FPS of N/2)", "",
            "`auto` is what the models use: the exact grid kNN from 4096 points on, exact FPS up to 4096 points and "
            "bucketed (approximate) FPS above; `brute`/`exact` are the plain reference paths.", "",
            "| N | " + " | ".join(OPS) + " |", "|---:|" + "---:|" * len(OPS)]  # fmt: skip
    all_n = sorted({n for cells in ops.values() for n in cells})
    for n in all_n:
        row = []
        for op in OPS:
            r = ops.get(op, {}).get(n)
            row.append("n/a" if r is None else (_f(r.get("op_ms")) if not r.get("error") else "skip"))
        out.append(f"| {n} | " + " | ".join(row) + " |")
    notes = sorted({f"{op}: {r['error']}" for op, cells in ops.items() for r in cells.values() if r.get("error")})
    if notes:
        out += [""] + [f"- {x}" for x in notes]
    if not any(op.endswith("torch_cluster") for op in ops):
        out += ["", "torch_cluster columns: n/a (not installed; pass `--torch-cluster-python` to a Python that has it)."]
    out += ["", f"## Accuracy next to cost (generated data, {cfg.train_points} points, {cfg.train_epochs} epochs, same data and "
            "optimiser for all)", "",
            f"A short, equal-budget training (Adam, lr 1e-3, batch 16): a sanity check that the models learn, not converged "
            "accuracy. Cost columns are from the table above at N = 1024.", "",
            "| model | params | test acc | train s | fwd+bwd ms @1024 | infer samples/s @1024 | GFLOPs @1024 |",
            "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name in models:
        t = train.get(name, {})
        c = models[name].get(1024, {})
        acc = f"{100 * t['test_acc']:.1f} %" if t.get("test_acc") is not None else f"n/a ({t.get('error', 'not run')})"
        out.append(f"| {label[name]} | {c.get('params') and format(c['params'], ',') or '–'} | {acc} | "
                   f"{_f(t.get('train_s'))} | {_f(c.get('train_ms'))} | {_f(c.get('infer_sps'))} | {_f(c.get('gflops'), '{:.2f}')} |")  # fmt: skip
    out += ["", "## Targets", ""] + targets(models, ops, local_slope)
    return "\n".join(out) + "\n"


def targets(models: dict, ops: dict, local_slope: float | None) -> list[str]:
    """The issue's targets, each met / not met / not measured, with the numbers."""
    lines = []
    c4, f4 = models.get(REFERENCE, {}).get(4096, {}), models.get("full_attention", {}).get(4096, {})
    if c4.get("train_ms") and f4.get("train_ms"):
        speed, mem = f4["train_ms"] / c4["train_ms"], c4["peak_mib"] / max(f4["peak_mib"], 1e-9)
        ok = speed >= 4 and mem <= 0.25
        lines.append(f"- N = 4096, centroid fwd+bwd ≥ 4× faster than full attention and ≤ ¼ of its peak memory: "
                     f"**{'met' if ok else 'not met'}** ({speed:.1f}× faster, {mem:.2f}× the memory).")  # fmt: skip
    else:
        why = f4.get("error") or c4.get("error") or "not measured"
        lines.append(f"- N = 4096 speed/memory against full attention: **not measured** ({why}).")
    if local_slope is not None:
        ns = [n for n, r in models.get(REFERENCE, {}).items() if not r.get("error") and n >= 4096]
        tried = max(models.get(REFERENCE, {}), default=0)
        verdict = "met" if local_slope <= 1.2 else "not met"
        if ns[-1] < tried:  # the fit stops short of the largest size asked for: no verdict on that range
            verdict = f"not verified up to N = {tried}; {verdict} up to N = {ns[-1]}"
        lines.append(f"- Local mode slope ≤ 1.2 from 4k to 64k: **{verdict}** "
                     f"(slope {local_slope:.2f} over N = {ns[0]}–{ns[-1]}).")  # fmt: skip
    else:
        lines.append("- Local mode slope from 4k to 64k: **not measured** (needs two sizes ≥ 4096).")
    c1, p1 = models.get(REFERENCE, {}).get(1024, {}), models.get("pointnet2", {}).get(1024, {})
    if c1.get("infer_sps") and p1.get("infer_sps"):
        ratio = c1["infer_sps"] / p1["infer_sps"]
        lines.append(f"- Inference at N = 1024 not below PointNet++: **{'met' if ratio >= 1 else 'not met'}** "
                     f"({c1['infer_sps']:.1f} vs {p1['infer_sps']:.1f} samples/s, {ratio:.2f}×).")  # fmt: skip
    else:
        lines.append("- Inference at N = 1024 against PointNet++: **not measured**.")
    tc = [(op, base) for op, base in (("knn_auto", "knn_torch_cluster"), ("fps_auto", "fps_torch_cluster")) if base in ops]
    if tc:
        for op, base in tc:
            pairs = [(n, ops[op][n]["op_ms"], ops[base][n]["op_ms"]) for n in ops[base]
                     if not ops[base][n].get("error") and not ops.get(op, {}).get(n, {}).get("error")]  # fmt: skip
            worst = max((a / b for _, a, b in pairs), default=None)
            detail = ", ".join(f"N={n}: {a / b:.2f}×" for n, a, b in pairs)
            verdict = "not measured" if worst is None else ("met" if worst <= 1.5 else "not met")
            lines.append(f"- {op} within 1.5× of torch_cluster: **{verdict}** ({detail}).")
    else:
        lines.append("- kNN/FPS within 1.5× of torch_cluster: **not measured** (torch_cluster not available in this run).")
    return lines


def run(cfg: Config, output: Path, command: str) -> str:
    """Run every part of the benchmark and write the report to ``output``; returns the markdown."""
    sizes = {name: list(cfg.sizes) + (list(cfg.local_sizes) if name == REFERENCE else []) for name in cfg.models}
    models = sweep(cfg.models, sizes, cfg, "train_ms")
    op_sizes = {op: list(cfg.sizes) + list(cfg.local_sizes) for op in OPS}
    ours = [op for op in OPS if not op.endswith("torch_cluster")]
    ops = sweep(ours, op_sizes, cfg, "op_ms")
    if cfg.torch_cluster_python:
        theirs = [op for op in OPS if op.endswith("torch_cluster")]
        ops.update(sweep(theirs, op_sizes, cfg, "op_ms", python=cfg.torch_cluster_python))
    train = {}
    for name in cfg.models:
        print(f"[benchmark] training {name}", flush=True)
        spec = TrainSpec(name, cfg.data_root, cfg.train_points, cfg.train_epochs, threads=cfg.threads,
                         train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class)  # fmt: skip
        train[name] = run_child("benchmarks.training", asdict(spec), cfg)
    text = render(cfg, models, ops, train, command)
    output.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m app.benchmark", description=__doc__.splitlines()[0])
    d = Config()
    p.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--quick", action="store_true", help="tiny sizes, end to end in seconds (for tests)")
    p.add_argument("--sizes", type=int, nargs="+", default=d.sizes)
    p.add_argument("--local-sizes", type=int, nargs="*", default=d.local_sizes, help="extra sizes for local mode and ops")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=d.models)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--cell-budget", type=float, default=d.cell_budget_s, help="seconds of timed repeats per cell")
    p.add_argument("--cell-timeout", type=float, default=d.cell_timeout_s, help="hard seconds limit per cell")
    p.add_argument("--mem-gib", type=float, default=d.mem_gib, help="address-space cap per cell (CPU)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per cell (0: torch's default)")
    p.add_argument("--device", default=d.device, help="cpu or cuda (bf16 autocast, SDPA kernels)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (GPU path)")
    p.add_argument("--train-epochs", type=int, default=d.train_epochs)
    p.add_argument("--data-root", default=d.data_root)
    p.add_argument("--torch-cluster-python", default=None, help="a Python with torch_cluster, for the comparison")
    a = p.parse_args(argv)
    if a.quick:
        cfg = quick_config(str(a.output.parent / "benchmark_data"))
        cfg.threads, cfg.device = a.threads, a.device
    else:
        cfg = Config(a.sizes, a.local_sizes, a.models, a.batch, a.repeats, a.cell_budget, a.cell_timeout, a.mem_gib,
                     a.threads, a.device, a.compile, a.train_epochs, data_root=a.data_root,
                     torch_cluster_python=a.torch_cluster_python)  # fmt: skip
    cfg.models = a.models
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda needs a CUDA build of torch and a GPU")
    command = "python -m app.benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    run(cfg, a.output, command.strip())
    print(f"[benchmark] wrote {a.output}")


if __name__ == "__main__":
    main()
