"""``python -m app.benchmark``: cost and learning of centroid attention against its baselines → BENCHMARKS.md.

Three parts, each stored as raw results in ``<output>.json`` so that a later run can redo one part and keep
the others (``--parts``):

- ``cost``: every model × N (and the centroid variants: schedule, T) — fwd+bwd time, inference throughput,
  peak memory, FLOPs (see ``benchmarks/harness.py``). On CPU every cell runs in its own subprocess under an
  address-space cap and a wall-time limit (honest peak RSS, failures isolated); on CUDA cells run in this
  process (``max_memory_allocated`` is exact there, and a process per cell would spend seconds starting CUDA).
- ``ops``: neighbour search and sampling on their own (in-model kNN/FPS, the data side's FPS order).
- ``train``: equal-budget training on the generated data, xyz only, one recipe, ``--seeds`` seeds, mean ± std
  (``benchmarks/training.py``), for the baselines and every centroid candidate in ``CANDIDATES``.
- ``fit`` (only when asked for): a real ``python -m app fit`` of configs/modelnet40.yaml on generated data of
  ModelNet40's size, timed end to end (``app/fit_benchmark.py``).

Full CPU run (the one in BENCHMARKS.md): see the command in its header. A tiny end-to-end run:
``python -m app.benchmark --quick --output /tmp/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from app.fit_benchmark import render_fit, run_fit
from benchmarks.harness import MODELS, OPS, RATIOS, CellSpec, error_text, loglog_slope, run_cell
from benchmarks.training import TrainSpec, prepare_training_data, train_and_test

REPO = Path(__file__).resolve().parents[1]
REFERENCE = "centroid_local"
PARTS = ("cost", "ops", "train", "fit")
#: The parts a plain run redoes (``fit`` takes an epoch at paper scale: asked for by name).
DEFAULT_PARTS = ("cost", "ops", "train")
#: Config fields that define a training measurement: rows measured with the same values are comparable
#: (a train run for some candidates keeps the others' rows only then).
TRAIN_SETUP = ("seeds", "train_epochs", "train_points", "train_per_class", "test_per_class", "data_root")
#: Centroid cost variants beside the default: name → (schedule ratios, T, backbone options, also at the large
#: sizes ``Config.local_sizes``, baselines measured at the same schedule and T), at ``Config.variant_sizes``.
VARIANTS: dict[str, tuple[list[int], int, dict, bool, tuple[str, ...]]] = {
    "T = 1": ([2, 4, 8], 1, {}, False, ("full_attention",)),
    "N/4 first": ([4, 8, 16], 2, {}, False, ("full_attention", "pointnet2")),
    "N/4 first, T = 1": ([4, 8, 16], 1, {}, False, ("full_attention",)),
    "recompute (stage activations recomputed in backward)": ([2, 4, 8], 2, {"recompute": True}, True, ()),
}
#: The variant label of cells measured with ``--compile``.
COMPILED = "torch.compile"
#: The training candidate that is the centroid backbone with its defaults (configs/model/backbone_*.yaml).
DEFAULT_CENTROID = "Centroid + LayerScale 1e-3, BatchNorm KNN init"
#: Training candidates: label → (model, backbone options, schedule ratios, T). The "(before)" rows are the
#: models as they were before issue 12 (no LayerScale, raw offsets).
CANDIDATES: dict[str, tuple[str, dict, list[int], int]] = {
    "PointNet++ SSG": ("pointnet2", {}, [2, 4, 8], 2),
    "PointNet++ SSG, BatchNorm": ("pointnet2", {"norm": "batch"}, [2, 4, 8], 2),
    "Full self-attention": ("full_attention", {}, [2, 4, 8], 2),
    "Full self-attention, no LayerScale (before)": ("full_attention", {"layer_scale": None}, [2, 4, 8], 2),
    "Centroid, plain init (before)": ("centroid_local", {"layer_scale": None, "init_norm": "layer"}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, LayerNorm KNN init": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "layer"}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, LayerNorm KNN init, T = 1": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "layer"}, [2, 4, 8], 1),
    "Centroid + normalised offsets": ("centroid_local", {"layer_scale": None, "init_norm": "layer", "normalize_offsets": True}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, 2-layer KNN init": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "layer", "init_layers": 2}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, BatchNorm KNN init": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "batch"}, [2, 4, 8], 2),
    "Centroid + LayerScale 1e-3, BatchNorm KNN init, T = 1": ("centroid_local", {"layer_scale": 1e-3, "init_norm": "batch"}, [2, 4, 8], 1),
}


@dataclass
class Config:
    """Sizes and limits of one benchmark run (``--quick`` shrinks all of them)."""

    sizes: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    local_sizes: list[int] = field(default_factory=lambda: [16384, 32768, 65536, 131072])  # local mode + ops only
    variant_sizes: list[int] = field(default_factory=lambda: [1024, 4096])
    models: list[str] = field(default_factory=lambda: list(MODELS))
    batch: int = 4
    repeats: int = 3
    cell_budget_s: float = 20.0  # timed repeats fit into about this
    cell_timeout_s: float = 240.0  # hard limit of one cell's subprocess
    mem_gib: float = 12.0  # address-space cap of one cell's subprocess
    threads: int = 0
    device: str = "cpu"
    compile: bool = False
    candidates: list[str] = field(default_factory=lambda: list(CANDIDATES))
    seeds: int = 3
    jobs: int = 1  # trainings run side by side
    train_epochs: int = 12
    train_points: int = 256
    train_per_class: int = 40
    test_per_class: int = 50  # 600 test shapes: one shape is 0.17 points (10 per class could not resolve 1.5)
    data_root: str = "data/benchmark_modelnet"
    torch_cluster_python: str | None = None
    isolate: bool = True  # one subprocess per cell (honest peak memory); False runs cells in this process
    fit_epochs: int = 1
    fit_limit_batches: int | None = None  # training (and validation) batches per epoch; None: all
    fit_workers: int | None = None  # loader workers; None: the config's
    fit_data_root: str = "data/benchmark_modelnet40_size"
    fit_timeout_s: float = 7200.0


def quick_config(data_root: str) -> Config:
    """Tiny sizes for tests: runs end to end in well under a minute."""
    return Config(sizes=[128], local_sizes=[256], variant_sizes=[128], batch=2, repeats=1, cell_budget_s=1.0,
                  cell_timeout_s=60.0, candidates=list(CANDIDATES)[:3], seeds=2, train_epochs=1, train_points=64,
                  train_per_class=1, test_per_class=1, data_root=data_root, isolate=False)  # fmt: skip


def run_child(module: str, payload: dict, cfg: Config, python: str | None = None) -> dict:
    """Run ``python -m module '<payload>'`` under the memory and time caps; its ``RESULT`` dict or an error.

    With ``cfg.isolate`` off (and always on CUDA) the cell runs in this process instead (no caps; on CPU
    peak memory then includes what earlier cells left behind).
    """
    if not cfg.isolate or cfg.device.startswith("cuda"):
        return _in_process(module, payload)

    def cap() -> None:
        limit = int(cfg.mem_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run(
            [python or sys.executable, "-m", module, json.dumps(payload)], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=cfg.cell_timeout_s, preexec_fn=cap,
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
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return {"error": error_text(e)}
    try:
        return asdict(train_and_test(TrainSpec(**payload)))
    except Exception as e:  # noqa: BLE001 -- as in the child: a failed training is a row note
        return {"error": f"{type(e).__name__}: {str(e).strip()[:160]}"}


def _predicted_s(done: list[tuple[int, float]], n: int) -> float | None:
    """Seconds one timed step would take at ``n``, extrapolated from the last two (or one, as N^1.5) sizes."""
    if not done:
        return None
    (n1, t1) = done[-1]
    slope = loglog_slope([n for n, _ in done[-2:]], [t for _, t in done[-2:]]) if len(done) > 1 else 1.5
    return t1 * (n / n1) ** max(slope or 1.5, 1.0)


def sweep(names: list[str], sizes_of: dict[str, list[int]], cfg: Config, key: str, python: str | None = None,
          ratios: list[int] = list(RATIOS), steps: int = 2, options: dict | None = None) -> dict:  # noqa: B006 -- never mutated
    """Cells of ``names`` over their sizes, ascending; sizes past a failure or the time limit are skipped.

    Size-major: every model's cell at one N runs before any cell at the next N, so the cells a ratio compares
    run minutes apart at most (a shared machine's speed drifts over a long sweep)."""
    results: dict[str, dict[int, dict]] = {name: {} for name in names}
    stamp = provenance()
    done: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    stop: dict[str, str | None] = {name: None for name in names}
    for n in sorted({n for name in names for n in sizes_of[name]}):
        for name in (m for m in names if n in sizes_of[m]):
            guess = _predicted_s(done[name], n)
            if stop[name]:
                results[name][n] = {"error": stop[name]}
                continue
            # a cell takes about: warm-up step + timed budget + inference warm-up + FLOPs forward
            if guess is not None and 3 * guess + cfg.cell_budget_s > cfg.cell_timeout_s:
                stop[name] = f"skipped: predicted {guess:.0f} s per step from smaller N exceeds the {cfg.cell_timeout_s:.0f} s limit"
                results[name][n] = {"error": stop[name]}
                continue
            spec = CellSpec(name, n, cfg.batch, cfg.repeats, cfg.cell_budget_s, cfg.threads, cfg.device,
                            compile=cfg.compile, ratios=ratios, steps=steps, options=options or {})  # fmt: skip
            print(f"[benchmark] {name} N={n} ratios={ratios} T={steps}", flush=True)
            res = {**run_child("benchmarks.harness", asdict(spec), cfg, python), **stamp}
            results[name][n] = res
            print(f"[benchmark]   -> {res.get('error') or res.get('train_ms') or res.get('op_ms'):.6}", flush=True)
            if res.get("error"):
                stop[name] = f"skipped: N={n} failed ({res['error']})"
            else:
                done[name].append((n, res[key] / 1e3))
    return {name: dict(sorted(cells.items())) for name, cells in results.items()}


def run_cost(cfg: Config) -> dict:
    """Every model × N, then the centroid variants; with ``cfg.compile`` only the models, kept apart as the
    ``COMPILED`` variant (beside the eager cells, never over them)."""
    sizes = {name: list(cfg.sizes) + (list(cfg.local_sizes) if name == REFERENCE else []) for name in cfg.models}
    models = sweep(cfg.models, sizes, cfg, "train_ms")
    if cfg.compile:
        return {"models": {}, "variants": {("" if m == REFERENCE else f"{m}@") + COMPILED: c for m, c in models.items()}}
    variants = {}
    if REFERENCE in cfg.models:
        for label, (ratios, steps, options, large, baselines) in VARIANTS.items():
            sizes = list(cfg.variant_sizes) + (list(cfg.local_sizes) if large else [])
            variants[label] = sweep([REFERENCE], {REFERENCE: sizes}, cfg, "train_ms", ratios=ratios, steps=steps,
                                    options=options)[REFERENCE]  # fmt: skip
            others = [m for m in baselines if m in cfg.models]
            done = sweep(others, {m: list(cfg.variant_sizes) for m in others}, cfg, "train_ms", ratios=ratios, steps=steps)
            variants.update({f"{m}@{label}": cells for m, cells in done.items()})
    return {"models": models, "variants": variants}


def _merge_cells(old: dict, new: dict) -> dict:
    """``{name: {N: cell}}`` tables: the new cells over the old ones (N keys as JSON strings)."""
    merged = {name: {str(n): c for n, c in cells.items()} for name, cells in old.items()}
    for name, cells in new.items():
        merged.setdefault(name, {}).update({str(n): c for n, c in cells.items()})
    return merged


def run_ops(cfg: Config) -> dict:
    op_sizes = {op: list(cfg.sizes) + list(cfg.local_sizes) for op in OPS}
    ops = sweep([op for op in OPS if not op.endswith("torch_cluster")], op_sizes, cfg, "op_ms")
    if cfg.torch_cluster_python:
        theirs = [op for op in OPS if op.endswith("torch_cluster")]
        ops.update(sweep(theirs, op_sizes, cfg, "op_ms", python=cfg.torch_cluster_python))
    return ops


def run_train(cfg: Config) -> dict:
    """Every candidate × seed, ``cfg.jobs`` trainings at a time (each its own process, ``cfg.threads`` threads)."""
    jobs = []
    for label in cfg.candidates:
        name, options, ratios, steps = CANDIDATES[label]
        for seed in range(cfg.seeds):
            spec = TrainSpec(name, cfg.data_root, cfg.train_points, cfg.train_epochs, threads=cfg.threads,
                             train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class, seed=seed,
                             ratios=ratios, steps=steps, options=options)  # fmt: skip
            jobs.append((label, spec))
    if jobs:  # the data set and its cache are built once, before trainings run side by side
        prepare_training_data(jobs[0][1])

    def one(job: tuple[str, TrainSpec]) -> dict:
        print(f"[benchmark] training {job[0]}, seed {job[1].seed}", flush=True)
        return run_child("benchmarks.training", asdict(job[1]), cfg)

    with ThreadPoolExecutor(max_workers=max(1, cfg.jobs)) as pool:  # threads wait on child processes
        results = list(pool.map(one, jobs))
    out: dict[str, list[dict]] = {label: [] for label in cfg.candidates}
    for (label, _), result in zip(jobs, results):
        out[label].append(result)
    return out


def provenance() -> dict[str, str]:
    """What every cell records besides its machine: the commit it was measured at (``+dirty`` when the code
    folders differ from it) and the date."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "app", "benchmarks", "models", "datamodules")
    return {"commit": commit + ("+dirty" if dirty else ""), "date": datetime.date.today().isoformat()}


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


def machine(device: str = "cpu") -> str:
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


def _int_keys(d: dict) -> dict:
    """JSON turns the N keys into strings: back to ints."""
    return dict(sorted((int(k), v) for k, v in d.items()))


def _cost_rows(label: str, cells: dict, ref: dict) -> list[str]:
    rows = []
    for n, r in cells.items():
        rr = ref.get(n, {})
        if r.get("error"):
            rows.append(f"| {label} | {n} | – | – | – | – | – | – | – | – | – | {r['error'][:120]} |")
            continue
        busy = [f"GPU busy {100 * r['kernel_frac']:.0f} %"] if r.get("kernel_frac") is not None else []
        tensors = r.get("tensor_peak_mib")
        if r.get("kernel_frac") is None and tensors is not None:  # CPU: the tensors' peak beside the resident size
            busy.append(f"tensors {tensors:.0f} MiB ({_ratio(tensors, rr.get('tensor_peak_mib'))})")
        note = "; ".join(busy + (r.get("notes") or []) + ([f"at {r['commit']}"] if r.get("commit") else []))
        spread = r.get("train_range_ms")
        train = _f(r["train_ms"]) + (f" ({spread[0]:.0f}–{spread[1]:.0f})" if spread and r["repeats"] > 1 else "")
        rows.append(
            f"| {label} | {n} | {train} | {_ratio(r['train_ms'], rr.get('train_ms'))} | "
            f"{_f(r['infer_sps'])} | {_ratio(r['infer_sps'], rr.get('infer_sps'))} | {_f(r['peak_mib'], '{:.0f}')} | "
            f"{_ratio(r['peak_mib'], rr.get('peak_mib'))} | {_f(r['gflops'], '{:.2f}')} | {r['params']:,} | {r['repeats']} | {note} |"
        )  # fmt: skip
    return rows


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * std:.1f}"


def render(cfg: Config, results: dict, command: str) -> str:
    """The markdown report from the raw results of every part (each described by the config it ran with): the
    CPU run, then the GPU run (``results["gpu"]``, same layout) where one was made."""
    out = ["# Benchmarks", ""]
    if results.get("parts"):
        out += _report(cfg, results, command, "##")
    gpu = results.get("gpu")
    if gpu:
        out += ["", "## GPU run", "", "The same cells on a GPU, measured apart from the CPU run above: ratios are "
                "within this run only."] + [""] + _report(cfg, gpu, command, "###")  # fmt: skip
    return "\n".join(out) + "\n"


def _machine_line(results: dict, cfg: Config) -> str:
    """The machine each part ran on, as recorded when it ran (older result files: this machine)."""
    seen = list(dict.fromkeys(results.get("machines", {}).values())) or [machine(cfg.device)]
    return "; ".join(seen)


def _report(cfg: Config, results: dict, command: str, h: str) -> list[str]:
    """One device's report (``h``: the markdown level of its section headings)."""
    configs = {part: Config(**c) for part, c in results.get("configs", {}).items()}
    train_cfg = configs.get("train", cfg)
    cfg = configs.get("cost", cfg)
    label = {k: v[0] for k, v in MODELS.items()}
    cost = results.get("cost", {})
    models = {name: _int_keys(cells) for name, cells in cost.get("models", {}).items()}
    variants = {name: _int_keys(cells) for name, cells in cost.get("variants", {}).items() if cells}
    ops = {op: _int_keys(cells) for op, cells in results.get("ops", {}).items()}
    train = results.get("train", {})
    ref = models.get(REFERENCE, {})
    gpu = cfg.device.startswith("cuda")
    unit = "GPU memory" if gpu else "resident memory"
    out = [
        f"Generated on {results.get('date', datetime.date.today().isoformat())} by:", "",
        *[f"- {part}: " + "; then ".join(f"`{c}`" for c in cmds) for part, cmds in _commands(results, command).items()], "",
        f"**Machine**: {_machine_line(results, cfg)}. Threads used: {cfg.threads or 'torch default'}. "
        f"Device: `{cfg.device}`" + (" (bf16 autocast)." if gpu else "."), "",
        "All models: stem 64, stage widths 128/256/512, k = 16 neighbours, 4 heads, T = 2 shared-weight steps, the "
        "project's classification head (40 classes), default schedule N/2 → N/4 → N/8 centroids (or seeds). Inputs "
        "are surface-like clouds in random point order, and every model samples for itself inside the timed step: "
        "exact FPS in its first stage (the `centroid::farthest_point_sample` operator), prefixes of that order "
        "after, as the centroid backbone does. "
        f"Batch of {cfg.batch}. Times are medians of up to {cfg.repeats} runs after one warm-up (two on CUDA; see "
        "`reps`).", "",
        "- **fwd+bwd**: one training step of one batch: forward with the sampling, cross-entropy, backward and the "
        "AdamW step. **infer**: samples/s of inference-mode "
        f"forward passes. **peak MiB**: {unit} the fwd+bwd step added at its high-water mark (CPU: `ru_maxrss` "
        "over the resident size before the first step, one process per cell; CUDA: `max_memory_allocated` over "
        "what was allocated before). **GFLOPs**: forward FLOPs per sample (2 × MACs) from "
        "`torch.utils.flop_counter`, every matmul and attention kernel counted (SDPA on its math kernel while "
        "counting); elementwise ops, gathers and the neighbour search are not counted. Ratios are relative to "
        "the centroid backbone (local) at the same N."
        + (" **GPU busy** (note): the GPU's busy time in one profiled fwd+bwd step (union of its kernels) over "
           "the step's wall time; below 100 % the GPU waits on Python and kernel launches." if gpu else
           " **tensors** (note): the peak of live tensor bytes in one more, profiled fwd+bwd step (the allocator's "
           "events, `torch.profiler` with `profile_memory`), as CUDA's `max_memory_allocated` counts: the resident "
           "size also holds what the C allocator keeps after frees and its fragmentation."), "",
        f"{h} Cost against N", "",
        "| model | N | fwd+bwd ms | × | infer samples/s | × | peak MiB | × | GFLOPs | params | reps | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for name, cells in models.items():
        out += _cost_rows(label[name], cells, ref)
    if variants:
        out += ["", f"{h} Centroid backbone variants (schedule, T, recompute)", "",
                "Centroid rows: the same backbone, ratios against its default (N/2 first, T = 2) at the same N. "
                "Baseline rows: that model at the variant's schedule and T, ratios against the centroid backbone "
                f"at the same variant and N (like for like). {COMPILED} rows: ratios against the same model "
                "uncompiled (the compile's speed-up).", "",
                "| variant | N | fwd+bwd ms | × | infer samples/s | × | peak MiB | × | GFLOPs | params | reps | note |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for name, cells in variants.items():
            model, _, variant = name.rpartition("@")
            if variant == COMPILED:
                out += _cost_rows(f"{label[model or REFERENCE]}, {variant}", cells, models.get(model or REFERENCE, {}))
            elif model:
                out += _cost_rows(f"{label[model]}, {variant}", cells, variants.get(variant, {}))
            else:
                out += _cost_rows(f"Centroid (local), {name}", cells, ref)
    out += ["", f"{h} Growth of fwd+bwd time with N (least-squares slope of log time against log N)", "",
            "| model | N range | slope |", "|---|---|---:|"]  # fmt: skip
    for name, cells in models.items():
        ok = [(n, r["train_ms"]) for n, r in cells.items() if not r.get("error")]
        s = loglog_slope([n for n, _ in ok], [t for _, t in ok])
        rng = f"{ok[0][0]}–{ok[-1][0]}" if ok else "–"
        out.append(f"| {label[name]} | {rng} | {_f(s, '{:.2f}')} |")
    if ops:
        out += _render_ops(cfg, ops, h)
    out += _render_train(train_cfg, train, h)
    if results.get("fit"):
        out += render_fit(results["fit"], h)
    out += ["", f"{h} Targets", ""] + targets(models, variants, cfg) + train_targets(train)
    return out


def _render_ops(cfg: Config, ops: dict, h: str) -> list[str]:
    out = ["", f"{h} Neighbour search and sampling (ms per batch of {cfg.batch}; kNN k = 16 of N/2 queries; FPS of N/2)", "",
           "`fps_auto` is the models' own sampling: exact FPS by one custom operator (`torch_quickfps` on the CPU, "
           "the batch's clouds in parallel; a Triton kernel on CUDA). `fps_order_data` is the data side's exact "
           "FPS order of every cloud (fpsample, one cloud at a time, in loader workers), needed only by "
           "`sampling: prefix` models (`fps_order: true`). `knn_auto` is the exact grid kNN from 4096 points on; "
           "`brute`/`exact` are the plain reference paths.", "",
           "| N | " + " | ".join(OPS) + " |", "|---:|" + "---:|" * len(OPS)]  # fmt: skip
    for n in sorted({n for cells in ops.values() for n in cells}):
        row = []
        for op in OPS:
            r = ops.get(op, {}).get(n)
            row.append("n/a" if r is None else (_f(r.get("op_ms")) if not r.get("error") else "skip"))
        out.append(f"| {n} | " + " | ".join(row) + " |")
    notes = sorted({f"{op}: {r['error']}" for op, cells in ops.items() for r in cells.values() if r.get("error")})
    out += [""] + [f"- {x}" for x in notes] if notes else []
    if not any(op.endswith("torch_cluster") for op in ops):
        out += ["", "torch_cluster columns: n/a (not installed; pass `--torch-cluster-python` to a Python that has it)."]
    return out


def _commands(results: dict, command: str) -> dict[str, list[str]]:
    """The commands that produced each part, in order (older result files lack them: this run's command)."""
    known = results.get("commands", {})
    out = {part: known.get(part, command) for part in results.get("parts", PARTS)}
    return {part: [c] if isinstance(c, str) else c for part, c in out.items()}


def _render_train(cfg: Config, train: dict, h: str) -> list[str]:
    if not train:
        return []
    out = ["", f"{h} Equal-budget training (generated data, xyz only, {cfg.train_points} points, {cfg.train_epochs} epochs, "
           f"{len(next(iter(train.values())))} seeds)", "",
           "One recipe for every model (`benchmarks/training.py`): AdamW (lr 1e-3, weight decay 0.05), linear warm-up "
           "over the first epoch then cosine per step, label smoothing 0.1, batch 16, head dropout 0.5, the data "
           "modules' training augmentation (scale, translate, jitter, point dropout), widths halved (stem 32, stages "
           f"64/128/256) to fit the CPU budget. {cfg.train_per_class} training and {cfg.test_per_class} test shapes per "
           "class, 12 classes (chance 8.3 %): one test shape is "
           f"{100 / (12 * cfg.test_per_class):.2f} points and the binomial standard error of a single run at 97 % is "
           f"{100 * (0.97 * 0.03 / (12 * cfg.test_per_class)) ** 0.5:.1f} points (with 10 test shapes per class, 120 in "
           "all, it was 1.6 points: the seed spread could not be resolved to 1.5 points). Test accuracy of the **last** "
           "epoch (no best-epoch picking, no voting), "
           "mean ± sample std over seeds; the seed sets initialisation, data order and augmentation. *train s*: wall time "
           f"of one run with {cfg.jobs} run{'s' if cfg.jobs != 1 else ''} side by side, one thread each (indicative: the cost tables are the "
           "timing reference). Every row names its options; *(before)* rows are the models as they were before "
           "issue 12, and docs/operator.md §6 says which options are the defaults and why.", "",
           "| model | test acc % (mean ± std) | per seed | train loss, last epoch | train s / run |",
           "|---|---:|---|---:|---:|"]  # fmt: skip
    for label, runs in train.items():
        ok = [r for r in runs if r.get("test_acc") is not None]
        errors = [r["error"] for r in runs if r.get("error")]
        per_seed = ", ".join(f"{100 * r['test_acc']:.1f}" for r in ok)
        loss = _f(statistics.fmean(r["curve"][-1] for r in ok), "{:.3f}") if ok and ok[0].get("curve") else "–"
        secs = _f(statistics.fmean(r["train_s"] for r in ok), "{:.0f}") if ok else "–"
        note = f" ({errors[0][:80]})" if errors else ""
        out.append(f"| {label} | {_mean_std([r['test_acc'] for r in ok])}{note} | {per_seed} | {loss} | {secs} |")
    return out


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
                     f"**{verdict}** ({speed_txt} faster{mem_txt}).")  # fmt: skip
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
                         + ("" if gpu else _memory_text(mem, tensors)) + ").")  # fmt: skip
    recompute = next((cells for name, cells in variants.items() if name.startswith("recompute")), {})
    rc4 = recompute.get(4096, {})
    if not gpu and rc4.get("train_ms") and f4.get("train_ms"):  # the memory option against the default baseline
        speed, (mem, tensors) = f4["train_ms"] / rc4["train_ms"], _memory_ratios(rc4, f4)
        ok = speed >= 4 and _within_half(mem, tensors)
        lines.append(f"  - centroid with `recompute: true`: **{'met' if ok else 'not met'}** ({speed:.2f}× faster"
                     f"{_memory_text(mem, tensors)}).")  # fmt: skip
    c1, p1, f1 = ref.get(1024, {}), models.get("pointnet2", {}).get(1024, {}), models.get("full_attention", {}).get(1024, {})
    if gpu and c1.get("train_ms") and p1.get("train_ms") and f1.get("train_ms"):
        vs_full, vs_pn = f1["train_ms"] / c1["train_ms"], p1["train_ms"] / c1["train_ms"]
        sps = cfg.batch / c1["train_ms"] * 1e3
        lines.append(f"- GPU, N = 1024, batch {cfg.batch}: training samples/s ≥ 2× full attention and ≥ PointNet++ "
                     f"(aim 1.5×): **{'met' if vs_full >= 2 and vs_pn >= 1 else 'not met'}** ({sps:.0f} samples/s; "
                     f"{vs_full:.2f}× full attention, {vs_pn:.2f}× PointNet++).")  # fmt: skip
    if gpu and c1.get("kernel_frac") is not None:
        frac = c1["kernel_frac"]
        lines.append(f"- GPU, N = 1024: kernel time ≥ 80 % of the step's wall time: **{'met' if frac >= 0.8 else 'not met'}** "
                     f"(GPU busy {100 * frac:.0f} % of a fwd+bwd step).")  # fmt: skip
    if gpu:
        ran = [cfg.batch * n // RATIOS[0] for n, r in ref.items() if not r.get("error")]
        failed = [f"N = {n}: {r['error'][:80]}" for n, r in ref.items() if r.get("error")]
        lines.append(f"- GPU, no failure up to B·M = 2²¹: largest B·M (batch × first-stage centroids) run here "
                     f"{max(ran, default=0):,}; failed cells: {'; '.join(failed) or 'none'}. The kernels at "
                     "B·M = 2²¹ are run by `pytest -m gpu` (tests/models/test_backbone.py).")  # fmt: skip
    if c1.get("infer_sps") and p1.get("infer_sps"):
        ratio = c1["infer_sps"] / p1["infer_sps"]
        lines.append(f"- Inference at N = 1024 ≥ PointNet++ SSG (aim 1.5×): **{'met' if ratio >= 1 else 'not met'}** "
                     f"({c1['infer_sps']:.1f} vs {p1['infer_sps']:.1f} samples/s, {ratio:.2f}×).")  # fmt: skip
    else:
        lines.append("- Inference at N = 1024 against PointNet++: **not measured**.")
    if not gpu:  # a CPU target
        lines.append(_slope_target(ref))
    for how, cells in (("default", ref), ("`recompute: true`", recompute)):
        big = cells.get(131072)
        if big is None or gpu:
            continue
        if big.get("error"):
            lines.append(f"- 131 072 points, batch {cfg.batch}, under 12 GiB ({how}): **not met** ({big['error'][:100]}).")
        else:
            lines.append(f"- 131 072 points, batch {cfg.batch}, under 12 GiB ({how}): "
                         f"**{'met' if big['peak_mib'] < 12 * 1024 else 'not met'}** "
                         f"(peak {big['peak_mib'] / 1024:.1f} GiB, fwd+bwd {big['train_ms'] / 1e3:.1f} s).")  # fmt: skip
    if not gpu:
        lines.append("- GPU targets (no failure up to B·M = 2²¹, batch-128 training throughput, kernel time ≥ 80 % of "
                     "the step): not part of a CPU run (`--device cuda`; see *GPU run* where there is one).")  # fmt: skip
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
    return f"- Local mode slope ≤ 1.1 from 4k to 64k: **{verdict}** (slope {slope:.3f} over N = {local[0][0]}–{local[-1][0]})."


def train_targets(train: dict) -> list[str]:
    """The issue's training targets: the default centroid backbone against PointNet++, full attention vs chance."""
    def accs(label: str) -> list[float]:
        return [100 * r["test_acc"] for r in train.get(label, []) if r.get("test_acc") is not None]

    lines = []
    ours = accs(DEFAULT_CENTROID)
    for ref in ("PointNet++ SSG", "PointNet++ SSG, BatchNorm"):
        theirs = accs(ref)
        if len(ours) > 1 and len(theirs) > 1:
            m, s, r = statistics.fmean(ours), statistics.stdev(ours), statistics.fmean(theirs)
            verdict = "met" if m >= r and s <= 1.5 else "not met"
            lines.append(f"- Training: centroid backbone (defaults) ≥ {ref} on the mean, std ≤ 1.5 points: **{verdict}** "
                         f"({m:.1f} ± {s:.1f} vs {r:.1f} ± {statistics.stdev(theirs):.1f} %).")  # fmt: skip
    full = accs("Full self-attention")
    if full:
        m = statistics.fmean(full)
        lines.append(f"- Training: full self-attention clearly above chance (8.3 %; taken as ≥ 25 %): **{'met' if m >= 25 else 'not met'}** "
                     f"({m:.1f} %, per seed {', '.join(f'{a:.1f}' for a in full)}).")  # fmt: skip
    return lines


def run(cfg: Config, output: Path, command: str, parts: tuple[str, ...] = PARTS) -> str:
    """Run ``parts``, keep the other parts' raw results from ``<output>.json``, write the report; returns it.

    A CUDA run keeps its results apart (under ``"gpu"``), so that CPU and GPU cells never share a table.
    """
    raw_path = output.with_suffix(".json")
    root = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    results = root.setdefault("gpu", {}) if cfg.device.startswith("cuda") else root
    if "cost" in parts:  # the cells measured now replace theirs; every other model × N is kept
        new, old = run_cost(cfg), results.get("cost", {})
        results["cost"] = {table: _merge_cells(old.get(table, {}), new[table]) for table in ("models", "variants")}
    if "ops" in parts:
        results["ops"] = run_ops(cfg)
    if "fit" in parts:
        results["fit"] = run_fit(cfg.device, cfg.fit_data_root, cfg.fit_epochs, cfg.fit_limit_batches, cfg.fit_workers,
                                 cfg.fit_timeout_s)  # fmt: skip
    kept_train = False
    if "train" in parts:  # candidates measured now replace theirs; the others are kept if measured the same way
        new, old = run_train(cfg), results.get("train", {})
        before = results.get("configs", {}).get("train")
        same = before is not None and all(before.get(f) == getattr(cfg, f) for f in TRAIN_SETUP)
        kept = {label: runs for label, runs in old.items() if same and label not in new and label in CANDIDATES}
        kept_train = bool(kept)
        results["train"] = {label: ({**kept, **new})[label] for label in CANDIDATES if label in kept or label in new}
    results["parts"] = sorted(set(results.get("parts", [])) | set(parts), key=PARTS.index)
    commands = results.setdefault("commands", {})
    for part in parts:  # a part redone for some models keeps the command of the rows it kept
        runs = commands.get(part, [])
        runs = [runs] if isinstance(runs, str) else runs
        keep = (part == "cost" and set(cfg.models) != set(MODELS)) or (part == "train" and kept_train)
        commands[part] = ([c for c in runs if c != command] if keep else []) + [command]
    results.setdefault("configs", {}).update({part: asdict(cfg) for part in parts})
    results.setdefault("machines", {}).update({part: machine(cfg.device) for part in parts})
    if parts:
        results["date"] = datetime.date.today().isoformat()
    raw_path.write_text(json.dumps(root, indent=1))
    text = render(cfg, root, command)
    output.write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m app.benchmark", description=__doc__.splitlines()[0])
    d = Config()
    p.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--parts", nargs="*", choices=PARTS, default=list(DEFAULT_PARTS),
                   help="which parts to (re)run; the others are kept from <output>.json (none: only re-render)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, end to end in seconds (for tests)")
    p.add_argument("--sizes", type=int, nargs="+", default=d.sizes)
    p.add_argument("--local-sizes", type=int, nargs="*", default=d.local_sizes, help="extra sizes for local mode and ops")
    p.add_argument("--variant-sizes", type=int, nargs="*", default=d.variant_sizes)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=d.models)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--cell-budget", type=float, default=d.cell_budget_s, help="seconds of timed repeats per cell")
    p.add_argument("--cell-timeout", type=float, default=d.cell_timeout_s, help="hard seconds limit per cell")
    p.add_argument("--mem-gib", type=float, default=d.mem_gib, help="address-space cap per cell (CPU)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads per cell (0: torch's default)")
    p.add_argument("--device", default=d.device, help="cpu or cuda (bf16 autocast, cells in one process)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (compile time noted per cell)")
    p.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=d.candidates)
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--jobs", type=int, default=d.jobs, help="trainings run side by side (each --threads threads)")
    p.add_argument("--train-epochs", type=int, default=d.train_epochs)
    p.add_argument("--test-per-class", type=int, default=d.test_per_class,
                   help="generated test shapes per class (50: 600 test shapes, one shape = 0.17 points)")
    p.add_argument("--data-root", default=d.data_root)
    p.add_argument("--torch-cluster-python", default=None, help="a Python with torch_cluster, for the comparison")
    p.add_argument("--fit-epochs", type=int, default=d.fit_epochs)
    p.add_argument("--fit-limit-batches", type=int, default=None, help="training/validation batches per fit epoch")
    p.add_argument("--fit-workers", type=int, default=None, help="loader workers of the fit (default: the config's)")
    a = p.parse_args(argv)
    if a.quick:
        cfg = quick_config(str(a.output.parent / "benchmark_data"))
        cfg.threads, cfg.device = a.threads, a.device
    else:
        cfg = Config(a.sizes, a.local_sizes, a.variant_sizes, a.models, a.batch, a.repeats, a.cell_budget,
                     a.cell_timeout, a.mem_gib, a.threads, a.device, a.compile, a.candidates, a.seeds,
                     jobs=a.jobs, train_epochs=a.train_epochs, test_per_class=a.test_per_class, data_root=a.data_root,
                     torch_cluster_python=a.torch_cluster_python, fit_epochs=a.fit_epochs,
                     fit_limit_batches=a.fit_limit_batches, fit_workers=a.fit_workers)  # fmt: skip
    cfg.models = a.models
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda needs a CUDA build of torch and a GPU")
    command = "python -m app.benchmark " + shlex.join(argv if argv is not None else sys.argv[1:])
    run(cfg, a.output, command.strip(), tuple(a.parts))
    print(f"[benchmark] wrote {a.output}")


if __name__ == "__main__":
    main()
