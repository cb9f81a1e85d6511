"""The baselines of :mod:`benchmarks.baselines` as a task's backbone (``class_path`` in a model config).

A task calls ``backbone.forward_features(pos, x, return_attention=...)`` → :class:`~models.backbone.BackboneOutput`
and reads ``in_channels``, ``out_channels`` and ``stages[0].sampling``. ``app.tasks`` types its backbone as
:class:`~models.backbone.CentroidBackbone`, so the adapters subclass it for that type only: they skip its
constructor (``nn.Module.__init__``) and hold the baseline as ``net``, with none of the centroid layers.
The baselines return only their last feature set, so the output holds one stage whose ``pos`` is the input
cloud, whose ``seed_idx`` is not tracked (zeros) and whose ``neighbors`` are empty (``[B, M, 0]``): enough for
the classification head, not for centroid pictures (no ``WandbPanels`` in configs/learning/callbacks.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from benchmarks.baselines import FullAttentionBackbone, PointNet2SSG
from models.backbone import BackboneOutput, CentroidBackbone, StageOutput


@dataclass(frozen=True)
class StageSampling:
    """How a baseline's stage picks its seeds (``"fps"`` or ``"prefix"``)."""

    sampling: str


class _Adapter(CentroidBackbone):
    """A baseline ``net`` behind the centroid backbone's interface."""

    def __init__(self, net: PointNet2SSG | FullAttentionBackbone) -> None:
        nn.Module.__init__(self)  # the type only: none of CentroidBackbone's layers
        self.net = net
        self.in_channels, self.out_channels, self.channels = net.in_channels, net.out_channels, net.channels
        self.stages = [StageSampling(s) for s in net.stage_sampling]  # what a task reads: stages[0].sampling


    def forward(self, pos: Tensor, x: Tensor | None = None) -> Tensor:
        return self.net(pos, x)

    def forward_features(self, pos: Tensor, x: Tensor | None = None, return_attention: bool = False) -> BackboneOutput:
        feat = self.net(pos, x)  # (B, M_S, out_channels)
        untracked = feat.new_zeros(feat.shape[:2]).long()  # (B, M_S): a baseline exposes no indices
        return BackboneOutput(pos, feat, [StageOutput(pos, feat, untracked, untracked[..., None][..., :0])])


class PointNet2TaskBackbone(_Adapter):
    """:class:`~benchmarks.baselines.PointNet2SSG` (same arguments) as a task backbone."""

    def __init__(
        self, in_channels: int = 0, stem_width: int = 64, num_centroids: list[int] = [512, 256, 128],  # noqa: B006
        widths: list[int] = [128, 256, 512], k: int = 16, sampling: str = "fps", norm: str = "layer",  # noqa: B006
    ) -> None:  # fmt: skip
        super().__init__(PointNet2SSG(in_channels, stem_width, num_centroids, widths, k, sampling, norm))


class FullAttentionTaskBackbone(_Adapter):
    """:class:`~benchmarks.baselines.FullAttentionBackbone` (same arguments) as a task backbone."""

    def __init__(
        self, in_channels: int = 0, stem_width: int = 64, num_centroids: list[int] = [512, 256, 128],  # noqa: B006
        widths: list[int] = [128, 256, 512], k: int = 16, steps: int = 2, heads: int = 4,  # noqa: B006
        sampling: str = "fps", layer_scale: float | None = 1e-3,
    ) -> None:  # fmt: skip
        super().__init__(
            FullAttentionBackbone(in_channels, stem_width, num_centroids, widths, k, steps, heads, sampling, layer_scale)
        )
