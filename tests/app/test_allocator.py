"""The glibc allocator setting of app/allocator.py."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from app.allocator import GLIBC_ENV, reuse_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (Linux)")
def test_reuse_freed_memory_applies_in_this_process() -> None:
    assert reuse_freed_memory()


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (Linux)")
def test_the_child_setting_keeps_a_large_freed_block_for_reuse() -> None:
    """With GLIBC_ENV a freed 64 MiB block stays in the process (reused next time); without it, glibc unmaps it."""
    code = (
        "import resource, torch\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize() / 2**20\n"
        "t = torch.ones(16 * 2**20); held = rss(); del t\n"  # 64 MiB: above glibc's largest mmap threshold (32 MiB)
        "print(held - rss())"
    )
    released = {}
    for name, env in (("default", {}), ("reuse", GLIBC_ENV)):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                             check=True)  # fmt: skip
        released[name] = float(out.stdout)
    assert released["default"] > 48  # the block went back to the system after the free
    assert released["reuse"] < 16  # kept: the next large tensor reuses these pages
