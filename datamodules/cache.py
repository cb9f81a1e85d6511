"""On-disk caches of preprocessed splits: one ``.npz`` per (split, settings), rebuilt when its sources change.

The file name carries a hash of the settings (so changing N or the sampling builds a new cache beside the old);
the file stores a fingerprint of its source files (path, size, mtime), and a mismatch rebuilds it. Files are
written to a temporary name and renamed into place, so interrupted runs never leave a half-written cache behind,
and built under a lock on the file (``datamodules.locks``), so concurrent builders (DDP ranks, two runs) build it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from datamodules.locks import target_lock

log = logging.getLogger(__name__)
_FINGERPRINT = "__fingerprint__"


def settings_key(settings: dict) -> str:
    """A short stable hash of a JSON-serialisable settings dict."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def fingerprint(files: Sequence[Path]) -> str:
    """Hash of the paths, sizes and modification times of ``files``."""
    h = hashlib.sha1()
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached(
    cache_dir: Path, name: str, settings: dict, files: Sequence[Path], build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Load ``<cache_dir>/<name>-<hash(settings)>.npz`` if it is current, else ``build()`` and save it.

    Concurrent callers build it once: the others wait under a lock on the file and then load it.
    """
    path = cache_dir / f"{name}-{settings_key(settings)}.npz"
    stamp = fingerprint(files)
    arrays = _load_current(path, stamp)
    if arrays is not None:
        return arrays
    with target_lock(path):
        arrays = _load_current(path, stamp)  # built meanwhile by the process that held the lock
        if arrays is None:
            log.info("building cache %s from %d files", path, len(files))
            arrays = _build(path, stamp, build)
    return arrays


def _load_current(path: Path, stamp: str) -> dict[str, np.ndarray] | None:
    """The cached arrays when ``path`` exists and was built from files with fingerprint ``stamp``, else ``None``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z[_FINGERPRINT]) == stamp:
                return {k: z[k] for k in z.files if k != _FINGERPRINT}
        log.info("cache %s is stale (its source files changed): rebuilding", path)
    except (OSError, ValueError, KeyError) as e:
        log.warning("cache %s is unreadable (%s): rebuilding", path, e)
    return None


def _build(path: Path, stamp: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``build()``, saved to ``path`` through a temporary file and one rename."""
    arrays = build()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays, **{_FINGERPRINT: np.array(stamp)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return arrays
