"""Probe of the full self-attention baseline's training (docs/operator.md §6): why it stayed at chance.

``python -m benchmarks.probe_full_attention '<json TrainSpec>'`` (``name`` must be ``full_attention``) trains
with the recipe of ``benchmarks/training.py`` and prints, at initialisation and after every epoch, on a fixed
test batch: the attention entropy / log N of each stage, the token diversity before and after each stage's
attention (variance across the points of a cloud over the mean square), the head input's diversity across
clouds and the spread of the logits; every 10 steps the loss and the gradient norms of the stem, the first and
last stage and the head; at the end the test accuracy.
"""

from __future__ import annotations

import json
import math
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.baselines import seeds
from benchmarks.training import TrainSpec, evaluate_accuracy, setup_run
from models.ops import knn


def _diversity(h: Tensor, dim: int) -> float:
    """Variance along ``dim`` over the mean square: 0 when all rows along ``dim`` are the same vector."""
    return float(h.var(dim=dim).mean() / (h.pow(2).mean() + 1e-12))


@torch.no_grad()
def probe(model: nn.Module, pos: Tensor) -> dict:
    """The stage-by-stage statistics of the full-attention classifier ``model`` on clouds ``pos [B, N, 3]``."""
    was_training = model.training
    model.eval()
    bb, out = model.backbone, {"entropy": [], "before": [], "after": []}
    h = bb.embed(pos, None)
    for stage in bb.stages:
        h = stage.proj(h) + stage.pos_code(pos)
        out["before"].append(_diversity(h, 1))
        for _ in range(stage.steps):
            h, w = stage.attention(h, return_attention=True)  # w: (B, heads, N, N)
            entropy = -(w.clamp_min(1e-12).log() * w).sum(-1).mean() / math.log(w.shape[-1])
        out["entropy"].append(float(entropy))
        out["after"].append(_diversity(h, 1))
        seed_pos = seeds(pos, stage.num_centroids, stage.sampling)
        nbr = knn(seed_pos, pos, stage.k, validate=False)
        h, pos = stage.pool(h, pos, seed_pos, nbr), seed_pos
    out["head_input"] = _diversity(torch.cat([h.amax(1), h.mean(1)], -1), 0)
    out["logits_std"] = float(model.head.classify(h).std(0).mean())
    model.train(was_training)
    return {k: [round(x, 4) for x in v] if isinstance(v, list) else round(v, 4) for k, v in out.items()}


def _grad_norm(module: nn.Module) -> float:
    return round(math.sqrt(sum(float(p.grad.norm()) ** 2 for p in module.parameters() if p.grad is not None)), 4)


def run(spec: TrainSpec) -> float:
    """Train ``spec`` while printing the probes; returns the test accuracy of the last epoch."""
    dm, model, opt, sched = setup_run(spec)
    bb = model.backbone
    groups = {"stem": bb.stem, "stage 1": bb.stages[0], "last stage": bb.stages[-1], "head": model.head}
    fixed = next(iter(dm.test_dataloader()))["pos"]
    print("init", probe(model, fixed), flush=True)
    step = 0
    model.train()
    for epoch in range(spec.epochs):
        losses = []
        for batch in dm.train_dataloader():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(batch["pos"]), batch["label"], label_smoothing=spec.label_smoothing)
            loss.backward()
            if step % 10 == 0:
                print(f"step {step} loss {loss.item():.3f} grad norms", {k: _grad_norm(m) for k, m in groups.items()})
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
        print(f"epoch {epoch + 1} mean loss {sum(losses) / len(losses):.3f}", probe(model, fixed), flush=True)
    acc = evaluate_accuracy(model, dm)
    print(f"test acc {acc:.4f}", flush=True)
    return acc


if __name__ == "__main__":
    run(TrainSpec(**json.loads(sys.argv[1])))
