"""On-disk caches of preprocessed splits: one ``.npz`` per (split, settings), rebuilt when its sources change.

The file name carries a hash of the settings (so changing N or the sampling builds a new cache beside the old);
the file stores a fingerprint of its source files (path, size, mtime), and a mismatch rebuilds it. Files are
written to a temporary name and renamed into place, so concurrent builders (DDP ranks) and interrupted runs
never leave a half-written cache behind.
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
    """Load ``<cache_dir>/<name>-<hash(settings)>.npz`` if it is current, else ``build()`` and save it."""
    path = cache_dir / f"{name}-{settings_key(settings)}.npz"
    stamp = fingerprint(files)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z[_FINGERPRINT]) == stamp:
                    return {k: z[k] for k in z.files if k != _FINGERPRINT}
            log.info("cache %s is stale (its source files changed): rebuilding", path)
        except (OSError, ValueError, KeyError) as e:
            log.warning("cache %s is unreadable (%s): rebuilding", path, e)
    log.info("building cache %s from %d files", path, len(files))
    arrays = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays, **{_FINGERPRINT: np.array(stamp)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return arrays
