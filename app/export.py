"""``python -m app export --ckpt <last.ckpt> --format onnx|exported-program --out <file>`` (docs/export.md).

The trained task is rebuilt from its checkpoint alone (``weights_only=True``, ``app.checkpoint``), put in eval
mode, and its per-pair kernels set to ``"gathered"`` (pure torch operators, which every format can express).
The written graph takes raw clouds in any order and any batch size: the first stage's exact FPS runs inside it
as unrolled ``ArgMax`` steps (``models.export_fps``), the cloud is reordered so its picks come first, and the
model's first stage takes that prefix (the prefix contract, docs/operator.md §2). Segmentation logits are put
back into the input's point order.

After writing, the file is loaded back (onnxruntime on the CPU; ``torch.export.load``) and checked against the
eager float32 model on the checkpoint's first test clouds: max absolute logit difference ≤ :data:`ATOL` and the
same predicted class (or part of every point). ``--time`` then times the written file against the eager model
(docs/export.md §5; ``python -m benchmarks --parts deploy`` puts that table in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from app.checkpoint import CheckpointError, load_datamodule, load_task, read_checkpoint
from app.errors import run_with_one_line_errors
from app.tasks import ClassificationTask, SegmentationTask
from models.export_fps import farthest_point_order
from models.ops import gather

FORMATS = ("onnx", "exported-program")
#: The parity bound on logits between the written file and the eager float32 model (issue 24).
ATOL = 1e-4
#: Test clouds of the parity check.
PARITY_CLOUDS = 32


class ExportError(ValueError):
    """An export that cannot be written or does not match the eager model; the message names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}")


class Deployable(nn.Module):
    """A trained task with its sampling inside: raw clouds in, logits out, in the input's point order.

    Shapes:
        pos ``[B, N, 3]``, category ``[B]`` long (segmentation), normal ``[B, N, 3]`` (``in_channels`` = 3)
        → ``[B, num_classes]`` (classification) or ``[B, N, num_parts]`` (segmentation, −inf at other
        categories' parts).
    """

    def __init__(self, task: LightningModule) -> None:
        super().__init__()
        self.task = copy.deepcopy(task).float().eval()
        first = self.task.backbone.stages[0]
        if first.sampling == "random":
            raise ValueError("a model with random seeds has no deterministic graph to export (sampling='random')")
        # fps: the graph orders the cloud (models.export_fps) and the stage takes the prefix; prefix: the
        # caller's clouds must already be in farthest-point order (the model's own contract)
        self.num_samples = first.num_centroids if first.sampling == "fps" else 0
        first.sampling = "prefix"
        for module in self.task.modules():  # the per-pair kernels as pure torch operators (models.pairs)
            if hasattr(module, "kernel"):
                module.kernel = "gathered"
            if hasattr(module, "max_rows"):  # no chunking over rows: its branch would bound the graph's batch size
                module.max_rows = None
        self.segmentation = isinstance(task, SegmentationTask)
        self.normals = task.backbone.in_channels > 0
        self.eval()

    def input_names(self) -> list[str]:
        return ["pos", *(["category"] if self.segmentation else []), *(["normal"] if self.normals else [])]

    def forward(self, pos: Tensor, *rest: Tensor) -> Tensor:
        inputs = dict(zip(self.input_names()[1:], rest))
        order = farthest_point_order(pos, self.num_samples) if self.num_samples else None
        if order is not None:
            pos = gather(pos, order)
            if "normal" in inputs:
                inputs["normal"] = gather(inputs["normal"], order)
        if not self.segmentation:
            return self.task(pos, inputs.get("normal"))
        logits = self.task(pos, inputs["category"], inputs.get("normal"))  # (B, N, P), in the sampled order
        if order is None:
            return logits
        return torch.empty_like(logits).scatter(1, order.unsqueeze(-1).expand_as(logits), logits)


def load_deployable(ckpt: str | Path) -> Deployable:
    """The checkpoint's task, eval mode, float32, wrapped for export."""
    task = load_task(ckpt)
    if not isinstance(task, (ClassificationTask, SegmentationTask)):
        raise CheckpointError(ckpt, f"holds a {type(task).__name__}, which has no export")
    return Deployable(task)


def example_inputs(model: Deployable, batch: int, num_points: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Random inputs of the right shapes and dtypes (for tracing and timing)."""
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(batch, num_points, 3, generator=g)]
    if model.segmentation:
        out.append(torch.randint(model.task.hparams["num_categories"], (batch,), generator=g))
    if model.normals:
        out.append(torch.nn.functional.normalize(torch.randn(batch, num_points, 3, generator=g), dim=-1))
    return tuple(out)


def parity_inputs(ckpt: str | Path, model: Deployable, count: int = PARITY_CLOUDS,
                  num_points: int | None = None) -> tuple[Tensor, ...]:
    """The first ``count`` clouds of the checkpoint's test split (``num_points`` per cloud: default, the trained
    N), as the model's inputs."""
    data = load_datamodule(ckpt, **({} if num_points is None else {"num_points": num_points}))
    data.prepare_data()
    data.setup("test")
    batches = []
    for batch in data.test_dataloader():
        batches.append(batch)
        if sum(len(b["pos"]) for b in batches) >= count:
            break
    cat = {k: torch.cat([b[k] for b in batches])[:count] for k in ("pos", "category", "normal") if k in batches[0]}
    return tuple(cat[name] for name in model.input_names())


def _dynamic_batch(model: Deployable) -> dict[str, object]:
    """A symbolic batch size for every input of :meth:`Deployable.forward` (``pos``, then ``*rest``)."""
    batch = torch.export.Dim("batch", min=1)
    return {"pos": {0: batch}, "rest": tuple({0: batch} for _ in model.input_names()[1:])}


def export_program(model: Deployable, inputs: tuple[Tensor, ...], out: Path) -> None:
    """``torch.export`` with a dynamic batch size, saved as a ``.pt2`` archive."""
    program = torch.export.export(model, inputs, dynamic_shapes=_dynamic_batch(model))
    torch.export.save(program, out)


def export_onnx(model: Deployable, inputs: tuple[Tensor, ...], out: Path) -> None:
    """ONNX by the dynamo exporter, dynamic batch size, weights inside the one file.

    ``optimize=False``: onnxscript's optimiser drops an ``Add`` of a constant as small as 1e-8 as if it were 0,
    which turns the segmentation head's inverse distances ``1 / (d + 1e-8)`` into ``inf`` (docs/export.md);
    onnxruntime optimises the graph itself when it loads it."""
    names = model.input_names()
    torch.onnx.export(model, inputs, out, input_names=names, output_names=["logits"],
                      dynamic_shapes=_dynamic_batch(model), dynamo=True, external_data=False, optimize=False,
                      verbose=False)


def runner(fmt: str, path: Path, model: Deployable) -> Callable[[tuple[Tensor, ...]], Tensor]:
    """A function running the written file: onnxruntime's CPU provider, or the program ``torch.export.load`` reads."""
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: not its optimiser's notes (unfoldable CastLike)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = model.input_names()
        return lambda inputs: torch.from_numpy(session.run(None, dict(zip(names, (t.numpy() for t in inputs))))[0])
    program = torch.export.load(path).module()
    return lambda inputs: program(*inputs)


@dataclass
class Parity:
    max_abs_diff: float
    same_predictions: bool
    clouds: int


@dataclass
class Written:
    """A written file, checked: its parity with the eager model, the export's wall time and the file's size."""

    path: str
    format: str
    num_points: int
    parity: Parity
    export_s: float
    file_mib: float


def compare(expected: Tensor, got: Tensor) -> Parity:
    """Max absolute difference of the finite logits (the −inf of masked parts must agree) and argmax agreement."""
    same_mask = bool(torch.equal(torch.isinf(expected), torch.isinf(got)))
    finite = torch.isfinite(expected)
    diff = (expected - got).abs()[finite].max().item() if same_mask else float("inf")
    return Parity(diff, bool(torch.equal(expected.argmax(-1), got.argmax(-1))), expected.shape[0])


def check_parity(fmt: str, path: Path, model: Deployable, eager: LightningModule, inputs: tuple[Tensor, ...]) -> Parity:
    """Raise :class:`ExportError` unless the written file matches the eager task (float32, its own kernels and FPS
    operator, inputs in their given order) within :data:`ATOL`, with the same predicted class or parts."""
    with torch.no_grad():
        expected = eager(*inputs)
        got = runner(fmt, path, model)(inputs)
    parity = compare(expected, got)
    if parity.max_abs_diff > ATOL or not parity.same_predictions:
        raise ExportError(path, f"does not match the eager model on {parity.clouds} test clouds: max |Δ logit| "
                                f"{parity.max_abs_diff:.2e} (bound {ATOL:.0e}), same predictions: "
                                f"{parity.same_predictions}")
    return parity


def export(ckpt: str | Path, fmt: str, out: str | Path, num_points: int | None = None) -> Written:
    """Write ``ckpt``'s model to ``out`` in ``fmt`` for clouds of ``num_points`` (default: the trained N), load it
    back and check it on the checkpoint's test clouds at that N (:func:`check_parity`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use {' or '.join(FORMATS)}")
    read_checkpoint(ckpt)  # one-line error for a file that is not one of our checkpoints
    eager = load_task(ckpt).float().eval()
    model = load_deployable(ckpt)
    inputs = parity_inputs(ckpt, model, num_points=num_points)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    (export_onnx if fmt == "onnx" else export_program)(model, inputs, out)
    seconds = time.perf_counter() - start
    parity = check_parity(fmt, out, model, eager, inputs)
    return Written(str(out), fmt, inputs[0].shape[1], parity, seconds, out.stat().st_size / 2**20)


@dataclass
class Timing:
    """One batch size: the written file's and the eager model's milliseconds per call (every timed call)."""

    batch: int
    file_ms: list[float]
    eager_ms: list[float]


def time_written(ckpt: str | Path, written: Written, batches: list[int], repeats: int) -> list[Timing]:
    """The written file against the eager model (its own kernels and FPS operator, no grad) on random clouds of the
    file's N: per batch size, one warm-up and ``repeats`` timed calls of the eager model, then of the file (in
    blocks: onnxruntime's and torch's thread pools keep spinning after a call, so alternating calls would slow
    each other down)."""
    task = load_task(ckpt).float().eval()
    model = load_deployable(ckpt)
    written_model = runner(written.format, Path(written.path), model)
    timings = []
    for batch in batches:
        inputs = example_inputs(model, batch, written.num_points)
        with torch.no_grad():
            eager = _time_calls(lambda inputs=inputs: task(*inputs), repeats)
            file = _time_calls(lambda inputs=inputs: written_model(inputs), repeats)
        timings.append(Timing(batch, file, eager))
    return timings


def _time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _spread(ms: list[float]) -> str:
    return f"{statistics.median(ms):.1f} ({min(ms):.1f}–{max(ms):.1f})"


def timing_table(written: Written, timings: list[Timing]) -> list[str]:
    """Markdown rows: median (min–max) ms of the file and of the eager model, and the ratio of the medians."""
    rows = [f"| format | N | batch | {written.format} median (min–max) ms | eager median (min–max) ms | speed-up |",
            "|---|---|---|---|---|---|"]
    for t in timings:
        ratio = statistics.median(t.eager_ms) / statistics.median(t.file_ms)
        rows.append(f"| {written.format} | {written.num_points} | {t.batch} | {_spread(t.file_ms)} | "
                    f"{_spread(t.eager_ms)} | {ratio:.2f}× |")
    return rows


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by `python -m app fit`")
    parser.add_argument("--format", default="onnx", help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, help="the file to write (.onnx, .pt2)")
    parser.add_argument("--num-points", type=int, default=None, help="N of the graph (default: the trained N)")
    parser.add_argument("--time", action="store_true", help="then time the file against eager torch")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes timed (--time)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per batch size (--time)")
    parser.add_argument("--json", type=Path, default=None, help="also write the checks and timings to this file")
    return parser.parse_args(argv)


def run(argv: list[str]) -> None:
    args = parse(argv)
    if args.json is not None and args.json.resolve() == Path(args.out).resolve():
        raise ValueError(f"--json {args.json}: the same file as --out")
    written = export(args.ckpt, args.format, args.out, args.num_points)
    parity = written.parity
    print(f"wrote {args.out} ({written.file_mib:.1f} MiB, {written.export_s:.1f} s, N = {written.num_points}): "
          f"max |Δ logit| {parity.max_abs_diff:.1e} against eager float32 on {parity.clouds} test clouds, "
          "same predictions")
    timings = time_written(args.ckpt, written, args.batches, args.repeats) if args.time else []
    if timings:
        print("\n".join(timing_table(written, timings)))
    if args.json is not None:
        args.json.write_text(json.dumps({**asdict(written), "timings": [asdict(t) for t in timings]}, indent=1))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m app export``: one-line errors, ``--verbose`` for the traceback."""
    run_with_one_line_errors(run, argv)


if __name__ == "__main__":
    main()
