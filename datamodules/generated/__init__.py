"""Transitional alias of :mod:`datamodules.synthetic` (the package's new name).

Kept only until ``datamodules/base.py`` and ``benchmarks/training.py`` import ``datamodules.synthetic``;
delete this folder in the same commit.
"""

from datamodules.synthetic import *  # noqa: F401,F403
from datamodules.synthetic import __all__, generate  # noqa: F401
