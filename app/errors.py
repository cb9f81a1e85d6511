"""One-line errors for every command: ``error: <file>: <problem>`` and a non-zero exit.

The full traceback is kept for ``--verbose`` (any position on the command line) or ``CENTROID_VERBOSE=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "CENTROID_VERBOSE"
#: The exit status of a command that stopped on an error it reported in one line.
ERROR_EXIT = 1


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line.

    An error raised in a DataLoader worker arrives re-wrapped with the worker's traceback in its message;
    its last line is the original ``module.Type: message``, which is what the user needs.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        kind, _, message = last.partition(": ")
        return message if kind.rsplit(".", 1)[-1] in ("DataFormatError", "CheckpointError") else last
    if isinstance(err, ValueError) and hasattr(err, "path"):  # DataFormatError, CheckpointError: name + problem
        return text
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def run_with_one_line_errors(main: Callable[[list[str]], T], argv: list[str] | None = None) -> T:
    """Call ``main(argv)``; on an exception print one line to stderr and exit with :data:`ERROR_EXIT`.

    ``argv`` defaults to ``sys.argv[1:]``; :data:`VERBOSE_FLAG` is taken out of it and, like
    :data:`VERBOSE_ENV`, lets the exception propagate with its full traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = VERBOSE_FLAG in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != VERBOSE_FLAG]
    if verbose:
        return main(argv)
    try:
        return main(argv)
    except Exception as err:  # noqa: BLE001 -- the one place that turns every failure into one line
        print(f"error: {one_line(err)}  (traceback: add {VERBOSE_FLAG})", file=sys.stderr)
        raise SystemExit(ERROR_EXIT) from None
