"""FLOPs per stage and parameter counts.

Counted with ``torch.utils.flop_counter.FlopCounterMode``: matrix products (``Linear``, ``einsum``/``bmm``,
``scaled_dot_product_attention``, forced onto its math kernel so that CPU runs count it too) are counted,
as ``2 × multiply-accumulates`` (the paper reports MACs = FLOPs / 2). Gathers, top-k, element-wise ops,
normalisation and the kNN/FPS neighbour search are NOT counted. While counting, the per-pair work runs on the
``"gathered"`` kernel (:func:`gathered_kernels`): its products (the local attention's ``q·k`` and ``Σ a v``,
R·K·C multiply-accumulates each) are einsums the counter sees, where the sparse CPU kernels would be counted
as dense products and the chunked and Triton kernels are custom operators the counter does not look into.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models.backbone import CentroidBackbone, KNNInit
from models.centroid_attention import CentroidAttention


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@contextmanager
def gathered_kernels(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with the per-pair work of its attention steps and KNN initialisations on the ``"gathered"``
    kernel (``models.pairs``) inside the block, each module's own kernel given back after; a ``"reference"``
    attention, whose products the counter sees already, is left as it is."""
    modules = [m for m in model.modules() if isinstance(m, (CentroidAttention, KNNInit)) and m.kernel != "reference"]
    kernels = [m.kernel for m in modules]
    for m in modules:
        m.kernel = "gathered"
    try:
        yield model
    finally:
        for m, kernel in zip(modules, kernels):
            m.kernel = kernel


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
        conditioned = self.head.num_categories > 0
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
    try:
        with gathered_kernels(model), FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            model(pos, x)
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    per_module = counter.get_flop_counts()  # keyed by module path: "_BackboneAndHead.backbone.stages.0"

    def flops_of(path: str) -> int:
        return int(sum(per_module.get(f"_BackboneAndHead.{path}", {}).values()))

    result = {"stem": flops_of("backbone.stem")}
    for s in range(len(backbone.stages)):
        result[f"stage_{s + 1}"] = flops_of(f"backbone.stages.{s}")
    if head is not None:
        result["head"] = flops_of("head")
    result["total"] = sum(result.values())
    return result
