"""Under DDP with 2 CPU processes, each rank sees a disjoint shard of the train split; with ``data_seed``, the
shards of the one ``(data_seed, epoch)`` permutation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.seeding import SeededShuffle

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_two_processes_disjoint_shards(generated_modelnet: Path, tmp_path: Path) -> None:
    """Without a data seed (Lightning's DistributedSampler) and with one (the project's), in one pair of processes."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    script = Path(__file__).with_name("ddp_shards.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(generated_modelnet), "none", "7"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for data_seed in (None, 7):
        r0, r1 = (json.loads((tmp_path / f"rank{r}_{data_seed}.json").read_text()) for r in (0, 1))
        assert r0["seen"] and r1["seen"]
        assert not set(r0["seen"]) & set(r1["seen"])
        assert len(r0["seen"]) == len(r1["seen"])  # DistributedSampler gives equal shards
        assert set(r0["seen"]) | set(r1["seen"]) <= set(range(r0["n"]))
        if data_seed is not None:  # the project's sampler kept (not replaced by Lightning's), one permutation cut
            assert r0["sampler"] == r1["sampler"] == "SeededShuffle"
            order = list(SeededShuffle(range(r0["n"]), data_seed))
            assert (r0["seen"], r1["seen"]) == (order[0::2], order[1::2])
