"""A map-style Dataset over the in-memory arrays of one preprocessed split; yields one sample of the batch contract."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

Sample = dict[str, Tensor]


class PointCloudDataset(Dataset[Sample]):
    """Samples ``{pos, [normal], label | (part, category), index}`` from arrays of equal length.

    Args:
        arrays: ``pos [S, N, 3]``, optional ``normal [S, N, 3]``, and ``label [S]`` or ``part [S, N]`` +
            ``category [S]``.
        indices: which rows form this split (``index`` in the batch is the position in this list).
        use_normals: put ``normal`` into the samples.
        transform: applied to each sample (training augmentation), or ``None``.
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        indices: np.ndarray | None = None,
        use_normals: bool = True,
        transform: Callable[[Sample], Sample] | None = None,
    ) -> None:
        keys = ["pos", "label", "part", "category"] + (["normal"] if use_normals else [])
        self.arrays = {k: arrays[k] for k in keys if k in arrays}
        self.indices = np.arange(len(arrays["pos"])) if indices is None else np.asarray(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        row = self.indices[i]
        sample = {k: torch.from_numpy(np.array(a[row])) for k, a in self.arrays.items()}
        for k in ("label", "part", "category"):
            if k in sample:
                sample[k] = sample[k].long()
        sample["index"] = torch.tensor(i, dtype=torch.long)
        return self.transform(sample) if self.transform is not None else sample
