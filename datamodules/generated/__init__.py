"""The generated default data sets: parametric labelled 3-D shapes written in the real ModelNet/ShapeNetPart layouts."""

from datamodules.generated.shapes import SHAPE_CLASSES, ShapeClass
from datamodules.generated.write import CLASS_NAMES, PART_TABLE, GeneratorConfig, generate, sample_shape

__all__ = ["CLASS_NAMES", "PART_TABLE", "SHAPE_CLASSES", "GeneratorConfig", "ShapeClass", "generate", "sample_shape"]
