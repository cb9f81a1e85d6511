"""Transitional alias of :mod:`datamodules.synthetic.write` (see ``datamodules/generated/__init__.py``)."""

from datamodules.synthetic.write import GeneratorConfig  # noqa: F401
