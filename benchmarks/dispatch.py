"""aten operators dispatched by one CPU training step of the paper-scale classifier (part of ``--parts ops``).

The backbone of configs/model/backbone_modelnet40.yaml, built from that file (jsonargparse, as the CLI does), with
the project's classification head (40 classes); a batch of 8 clouds of 1024 points in random order (the model
samples for itself). Counted with a ``TorchDispatchMode``: every aten call that reaches the dispatcher below
autograd, in the forward (with the loss) and in the backward, after one warm-up step. Fewer dispatches is fewer
kernel launches on a GPU (docs/operator.md §7).
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext

import torch
import yaml
from jsonargparse import ArgumentParser
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.harness import Classifier
from benchmarks.runner import REPO
from models.backbone import CentroidBackbone
from models.heads import ClassificationHead

BACKBONE = "configs/model/backbone_modelnet40.yaml"
#: The sampling issue's target: at most this many dispatches in the forward, and in the backward (N = 1024, batch 8).
TARGET = 1500


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views = 0  # aliasing ops (view, t, permute, detach, ...): metadata only, no kernel

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        self.views += func.is_view
        return func(*args, **(kwargs or {}))


def paper_backbone() -> CentroidBackbone:
    """configs/model/backbone_modelnet40.yaml's backbone, instantiated as the CLI would."""
    parser = ArgumentParser()
    parser.add_subclass_arguments(CentroidBackbone, "backbone")
    spec = yaml.safe_load((REPO / BACKBONE).read_text())
    return parser.instantiate_classes(parser.parse_object({"backbone": spec})).backbone


def count_step(batch: int = 8, num_points: int = 1024, num_classes: int = 40, seed: int = 0) -> dict:
    """``{"forward": n, "backward": n, "forward_views": n, ..., "top_forward": [(op, n), ...], ...}`` for one
    training step (after a warm-up); ``*_views``: how many of them only alias (no kernel)."""
    torch.manual_seed(seed)
    backbone = paper_backbone()
    model = Classifier(backbone, ClassificationHead(backbone.out_channels, num_classes)).train()
    pos = torch.randn(batch, num_points, 3)
    label = torch.randint(num_classes, (batch,))

    def step(forward: _Count | None = None, backward: _Count | None = None) -> None:
        model.zero_grad(set_to_none=True)
        with forward or nullcontext():
            loss = torch.nn.functional.cross_entropy(model(pos), label)
        with backward or nullcontext():
            loss.backward()

    step()
    fwd, bwd = _Count(), _Count()
    step(fwd, bwd)
    return {"config": BACKBONE, "batch": batch, "num_points": num_points, "forward": sum(fwd.ops.values()),
            "backward": sum(bwd.ops.values()), "forward_views": fwd.views, "backward_views": bwd.views,
            "top_forward": fwd.ops.most_common(8),
            "top_backward": bwd.ops.most_common(8)}


def render_dispatch(d: dict, h: str) -> list[str]:
    """The report's lines on the count, with the target's verdict at its size (N = 1024, batch 8)."""
    at_size = d["num_points"] == 1024 and d["batch"] == 8
    lines = ["", f"{h} aten operators dispatched by one training step", "",
             f"`{d['config']}` with the classification head, batch {d['batch']}, N = {d['num_points']}, CPU, after one "
             f"warm-up step (`benchmarks/dispatch.py`), measured at {d['commit']}. *Aliasing*: views, transposes, "
             "detaches (metadata only, no kernel).", "",
             "| pass | aten ops | of which aliasing | most frequent |", "|---|---:|---:|---|"]
    for part in ("forward", "backward"):
        top = ", ".join(f"{op.removeprefix('aten.')} {n}" for op, n in d[f"top_{part}"][:5])
        lines.append(f"| {part} | {d[part]} | {d[f'{part}_views']} | {top} |")
    if at_size:
        lines.append("")
        lines += [f"- {part} ≤ {TARGET} aten ops: **{'met' if d[part] <= TARGET else 'not met'}** ({d[part]})."
                  for part in ("forward", "backward")]
    return lines
