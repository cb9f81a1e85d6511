"""LightningDataModules, readers of every on-disk format, transforms and the generated data set.

The batch contract is documented in :mod:`datamodules.batch`.
"""

from datamodules.errors import DataFormatError
from datamodules.io import read_points
from datamodules.modelnet import ModelNetDataModule
from datamodules.shapenetpart import ShapeNetPartDataModule
from datamodules.transforms import Augment

__all__ = ["Augment", "DataFormatError", "ModelNetDataModule", "ShapeNetPartDataModule", "read_points"]
