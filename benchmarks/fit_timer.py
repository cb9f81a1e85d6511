"""A callback that times a real ``fit`` as a user runs it (the Lightning CLI, its loaders, validation, logging).

Added to a run with ``--trainer.callbacks+=benchmarks.fit_timer.FitTimer --trainer.callbacks.output=PATH``
(``python -m benchmarks --parts fit`` does this). Per epoch it writes to ``output`` (JSON, rewritten after every epoch):

- ``train_s``: from the epoch's start to its last training batch's end; ``samples``: training samples seen;
  ``samples_per_s`` = samples / train_s.
- ``epoch_s``: from the epoch's start to ``on_train_epoch_end``, which Lightning calls after the epoch's
  validation: the epoch time with validation.
- ``wait_s``: the time between one training batch's end and the next one's start (and before the first):
  the loop waiting on its loader, plus Lightning's own bookkeeping between steps; ``wait_frac`` = wait_s /
  train_s.
- ``gpu_busy_frac`` (CUDA): the GPU's busy time (the union of its kernels and copies, ``torch.profiler``)
  over the wall time of training batches ``busy_batches`` of the first epoch; ``None`` on the CPU.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def busy_seconds(prof: profile) -> float:
    """Seconds covered by the union of the profiled CUDA kernels' and copies' intervals (overlaps count once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    busy, end = 0.0, -math.inf
    for a, b in spans:  # microseconds
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    return busy / 1e6


class FitTimer(Callback):
    """Training throughput, epoch time, loader wait and GPU busy share of a ``fit`` (module docstring).

    Args:
        output: the JSON file written after every epoch.
        busy_batches: ``[first, last)`` training batches of the first epoch profiled for the GPU busy share.
    """

    def __init__(self, output: str, busy_batches: tuple[int, int] = (20, 40)) -> None:
        self.output = Path(output)
        self.busy_batches = busy_batches
        self.epochs: list[dict[str, Any]] = []
        self._profiler: profile | None = None
        self._busy_wall = 0.0
        self._busy_frac: float | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = self._last_end = time.perf_counter()
        self._wait, self._samples = 0.0, 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        self._wait += now - self._last_end
        if batch_idx == self.busy_batches[0] and not self.epochs and pl_module.device.type == "cuda":
            torch.cuda.synchronize()
            self._profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self._profiler.__enter__()
            self._busy_wall = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += len(batch["pos"])
        if self._profiler is not None and batch_idx + 1 == self.busy_batches[1]:
            torch.cuda.synchronize()
            wall = time.perf_counter() - self._busy_wall
            self._profiler.__exit__(None, None, None)
            self._busy_frac = busy_seconds(self._profiler) / wall
            self._profiler = None
        self._last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        train_s = self._last_end - self._start
        self.epochs.append({
            "epoch": trainer.current_epoch, "samples": self._samples, "train_s": train_s,
            "samples_per_s": self._samples / train_s, "epoch_s": time.perf_counter() - self._start,
            "wait_s": self._wait, "wait_frac": self._wait / train_s, "gpu_busy_frac": self._busy_frac,
        })
        if trainer.is_global_zero:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.output.write_text(json.dumps({"epochs": self.epochs}, indent=1))
