"""An exclusive lock on a data folder or cache file while it is created, so that concurrent first runs on one
empty data folder (two trainings, DDP ranks) build it once and never read what another is still writing.

``fcntl.flock`` on a lock file beside the target (Linux and macOS); the lock file stays, empty.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def target_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<parent>/.<name>.lock`` for ``target``; blocks while another process holds it."""
    lock = target.with_name(f".{target.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, also if the process dies
        yield
