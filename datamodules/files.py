"""User files as samples of the batch contract: ``predict`` on files and the visualiser read them here.

A file is read (``datamodules.io.read_points``), reduced to ``num_points`` with the data sets' own
sampling, and normalised to the unit sphere, exactly like the training data. ``source_index`` keeps the file
row of every point, so predictions can be mapped back to the file's own points.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.io import count_clouds, read_points
from datamodules.sampling import Sampling, select_points
from datamodules.transforms import FPSOrder, normalize_unit_sphere

#: Neighbours used to estimate normals of files that have none (when the model expects normals).
NORMAL_NEIGHBORS = 16


def estimate_normals(pos: np.ndarray, k: int = NORMAL_NEIGHBORS) -> np.ndarray:
    """Unit normals ``[N, 3]`` from the ``k`` nearest neighbours (Open3D), oriented away from the centre."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pos.astype(np.float64)))
    cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(k))
    normal = np.asarray(cloud.normals)
    flip = np.sum(normal * (pos - pos.mean(0)), axis=1) < 0
    normal[flip] *= -1
    return normal.astype(np.float32)


def load_file_sample(
    path: str | Path,
    num_points: int,
    use_normals: bool,
    sampling: Sampling = "fps",
    category: int | None = None,
    seed: int = 0,
    index: int | None = None,
) -> dict[str, Tensor]:
    """One user file (``.off .ply .txt .npy .h5``) as an unbatched sample ``{pos, [normal], [category],
    source_index}``, its points in farthest-point order like every sample of the data modules.

    ``source_index [N]``: the row of each point among the points :func:`file_points` returns (repeated rows
    when the file has fewer than ``num_points``). ``index`` picks one cloud of a multi-cloud ``.npy``/``.h5``
    file. Normals are estimated when the model needs them and the file has none. Errors name the file.
    """
    cloud = read_points(path, seed=seed, index=index)
    row = select_points([cloud["pos"]], num_points, sampling, np.random.default_rng(seed))[0]
    pos = normalize_unit_sphere(cloud["pos"][row])
    sample = {"pos": torch.from_numpy(pos), "source_index": torch.from_numpy(row)}
    if use_normals:
        normal = estimate_normals(pos) if cloud["normal"] is None else cloud["normal"][row]
        sample["normal"] = torch.from_numpy(np.ascontiguousarray(normal, np.float32))
    if category is not None:
        sample["category"] = torch.tensor(category, dtype=torch.long)
    return FPSOrder()(sample)  # the batch contract: points in FPS order (docs/batch.md), file rows alike


def file_points(path: str | Path, seed: int = 0, index: int | None = None) -> np.ndarray:
    """The points ``[P, 3]`` of a file in its own row order, as :func:`load_file_sample` read them (a mesh: the
    points sampled from its surface with ``seed``); ``source_index`` counts rows of this array."""
    return read_points(path, seed=seed, index=index)["pos"]


class PointFilesDataset(Dataset[dict[str, Tensor]]):
    """Samples of a list of user files: every cloud of every file (a ``[B, N, C]`` ``.h5``/``.npy`` gives B).

    ``index`` of a sample = its position in ``names``: the path, with ``[i]`` appended for the clouds of a
    multi-cloud file. File headers are read (and checked) here, so a bad file fails before any model runs.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        num_points: int,
        use_normals: bool,
        sampling: Sampling = "fps",
        category: int | None = None,
    ) -> None:
        if not files:
            raise ValueError("no files given to predict on")
        self.entries: list[tuple[str, int | None]] = []
        for f in files:
            count = count_clouds(f)
            self.entries += [(str(f), None)] if count == 1 else [(str(f), i) for i in range(count)]
        self.names = [path if i is None else f"{path}[{i}]" for path, i in self.entries]
        self.num_points, self.use_normals, self.sampling, self.category = num_points, use_normals, sampling, category

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        path, cloud = self.entries[i]
        sample = load_file_sample(path, self.num_points, self.use_normals, self.sampling, self.category, index=cloud)
        sample["index"] = torch.tensor(i, dtype=torch.long)
        return sample

    def points(self, i: int) -> np.ndarray:
        """All points ``[P, 3]`` of sample ``i``'s cloud in the file's row order (what ``source_index`` indexes)."""
        path, cloud = self.entries[i]
        return file_points(path, index=cloud)
