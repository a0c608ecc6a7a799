"""The process settings an entry point makes once: here, the allocator setting `inspector fit` uses."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Without the setting, glibc raises its mapping threshold past 32 MiB after the first large free, and the
# half-freed heap below held small objects stays resident; with it, every large block is unmapped when freed.
CHILD = """
import numpy as np
from inspector.common.system import return_large_frees_to_the_system

def rss_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

if {set_it}:
    assert return_large_frees_to_the_system()
np.ones(48 << 20, np.uint8)  # one large mapped block, freed at once
base, held = rss_mib(), []
for i in range(64):
    big = [np.ones((1 + i % 5) << 20, np.uint8) for _ in range(i % 4 + 1)]  # 1-20 MiB a round, freed below
    held.append(np.ones(4096, np.uint8))  # a small object that stays, allocated after them
    del big
print(rss_mib() - base)
"""


def grown_mib(set_it: bool) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD.format(set_it=set_it)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_fit_processes_give_freed_large_blocks_back_to_the_system() -> None:
    assert grown_mib(True) < 2 < 5 < grown_mib(False)  # about 0.2 and 10 MiB here
