"""Synthetic data sets (the generated default): parametric labelled 3-D shapes written in the real
ModelNet/ShapeNetPart layouts."""

from datamodules.synthetic.shapes import SHAPE_CLASSES, ShapeClass
from datamodules.synthetic.write import CLASS_NAMES, PART_TABLE, GeneratorConfig, generate, sample_shape

__all__ = ["CLASS_NAMES", "PART_TABLE", "SHAPE_CLASSES", "GeneratorConfig", "ShapeClass", "generate", "sample_shape"]
