"""The one error type of this package: a bad input file, named together with what is wrong."""

from __future__ import annotations

from os import PathLike


class DataFormatError(ValueError):
    """A data file (or folder) is missing, corrupt or inconsistent. The message names it and the problem."""

    def __init__(self, path: str | PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
