"""FLOPs per stage and parameter counts.

Counted with ``torch.utils.flop_counter.FlopCounterMode``: matrix products (``Linear``, ``einsum``/``bmm``,
``scaled_dot_product_attention``, forced onto its math kernel so that CPU runs count it too) are counted,
as ``2 × multiply-accumulates`` (the paper reports MACs = FLOPs / 2). Gathers, top-k, element-wise ops,
normalisation and the kNN/FPS neighbour search are NOT counted. The local attention's per-pair products
(``q·k`` and ``Σ a v``, R·K·C multiply-accumulates each) are broadcast multiplies the counter does not see:
``models.centroid_attention.pair_flop_counter`` adds them to the stage that runs them (and keeps the sparse
CPU kernels off, whose products the counter would count as dense).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models.backbone import CentroidBackbone
from models.centroid_attention import pair_flop_counter


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class _BackboneAndHead(nn.Module):
    """One root module, so that the counter names every part by its path."""

    def __init__(self, backbone: CentroidBackbone, head: nn.Module | None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, pos: torch.Tensor, x: torch.Tensor | None) -> None:
        out = self.backbone.forward_features(pos, x)
        if self.head is None:
            return
        # The one head contract (models/heads.py): head(out), plus the category for category-conditioned heads.
        conditioned = getattr(self.head, "num_categories", 0) > 0
        category = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        self.head(out, category) if conditioned else self.head(out)


@torch.no_grad()
def count_flops(
    backbone: CentroidBackbone,
    head: nn.Module | None = None,
    num_points: int = 1024,
    batch_size: int = 1,
    in_channels: int | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """Forward FLOPs on a random cloud: ``{"stem", "stage_1".."stage_S", ["head"], "total"}``.

    ``in_channels`` defaults to the backbone's. The per-part numbers sum to ``total``.
    """
    in_channels = backbone.in_channels if in_channels is None else in_channels
    g = torch.Generator().manual_seed(seed)
    device = next(backbone.parameters()).device
    pos = torch.rand(batch_size, num_points, 3, generator=g).to(device)
    x = torch.randn(batch_size, num_points, in_channels, generator=g).to(device) if in_channels > 0 else None
    model = _BackboneAndHead(backbone, head)
    modes = [m.training for m in model.modules()]
    model.eval()
    pair_flops = [0] * len(backbone.stages)  # the local attention's per-pair products, per stage
    with pair_flop_counter() as pairs:

        def track(s: int, sign: int) -> Callable[..., None]:  # stage s: pair total after its forward − before
            def hook(*_: object) -> None:
                pair_flops[s] += sign * pairs[0]

            return hook

        hooks = [h for s, stage in enumerate(backbone.stages)
                 for h in (stage.register_forward_pre_hook(track(s, -1)), stage.register_forward_hook(track(s, 1)))]  # fmt: skip
        try:
            with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
                model(pos, x)
        finally:
            for h in hooks:
                h.remove()
            for m, mode in zip(model.modules(), modes):
                m.training = mode
    per_module = counter.get_flop_counts()  # keyed by module path: "_BackboneAndHead.backbone.stages.0"

    def flops_of(path: str) -> int:
        return int(sum(per_module.get(f"_BackboneAndHead.{path}", {}).values()))

    result = {"stem": flops_of("backbone.stem")}
    for s in range(len(backbone.stages)):
        result[f"stage_{s + 1}"] = flops_of(f"backbone.stages.{s}") + pair_flops[s]
    if head is not None:
        result["head"] = flops_of("head")
    result["total"] = sum(result.values())
    return result
