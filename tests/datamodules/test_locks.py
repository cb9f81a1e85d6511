"""Concurrent first runs on one empty data folder: the data set and its caches are built once, and every run
reads them complete (``datamodules.locks`` around ``synthetic.generate`` and ``cache.cached``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datamodules import cache
from datamodules.synthetic import generate, write
from tests.datamodules.conftest import TINY


def _meeting_point() -> Callable[[], None]:
    """Where two concurrent builders wait for each other (1 s at most): without a lock both get there at once
    and race; with one, the second is still waiting for the lock and the first goes on alone."""
    barrier = threading.Barrier(2)

    def meet() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=1)

    return meet


def _in_two_threads(fn: Callable[[], Any]) -> list[Any]:
    """``fn()`` in two threads started together: both results, or the exception each raised."""
    results: list[Any] = [None, None]

    def run(i: int) -> None:
        try:
            results[i] = fn()
        except Exception as e:  # noqa: BLE001 -- reported by the assertions
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_two_first_runs_generate_one_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "generated_modelnet"
    root.mkdir()  # the empty data folder of a first run
    writes: list[Path] = []
    meet, real = _meeting_point(), write._write_modelnet

    def writing(out: Path, cfg: write.GeneratorConfig) -> None:
        writes.append(out)
        real(out, cfg)
        meet()

    monkeypatch.setattr(write, "_write_modelnet", writing)

    def first_run() -> int:
        generate(root, "modelnet", TINY)
        ids = [i for split in ("train", "test") for i in (root / f"modelnet40_{split}.txt").read_text().split()]
        rows = [len((root / i.rsplit("_", 1)[0] / f"{i}.txt").read_text().splitlines()) for i in ids]
        assert rows == [TINY.points] * len(ids)
        return len(ids)

    results = _in_two_threads(first_run)
    expected = len(write.CLASS_NAMES) * (TINY.train_per_class + TINY.test_per_class)
    assert results == [expected, expected]
    assert len(writes) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".generated_modelnet.lock", "generated_modelnet"]


def test_two_runs_build_one_cache_once(tmp_path: Path) -> None:
    source = tmp_path / "source.txt"
    source.write_text("1 2 3\n")
    builds: list[int] = []
    meet = _meeting_point()

    def build() -> dict[str, np.ndarray]:
        builds.append(1)
        meet()
        return {"points": np.arange(12.0).reshape(4, 3)}

    results = _in_two_threads(lambda: cache.cached(tmp_path / "cache", "train", {"n": 4}, [source], build))
    for r in results:
        assert isinstance(r, dict), r
        np.testing.assert_array_equal(r["points"], np.arange(12.0).reshape(4, 3))
    assert len(builds) == 1
