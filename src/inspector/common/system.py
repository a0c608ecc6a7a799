"""The process's CPU threads and memory: set once at an entry point, read anywhere.

Thread counts are process-wide for FAISS (OpenMP) and torch, so they are set here by whoever starts the process
(the CLI command, the service), never by a model's constructor: two models in one service must not change each
other's threads. onnxruntime takes its thread count per session instead, so runners are given it directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys
from pathlib import Path


def cpu_threads(threads: int | None = None) -> int:
    """The thread count to use: as asked, else every core this process may run on."""
    if threads:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# glibc's mallopt parameter: allocations at least this large are mapped on their own and unmapped when freed.
M_MMAP_THRESHOLD = -3
FIT_MMAP_THRESHOLD = 128 * 1024


def return_large_frees_to_the_system() -> bool:
    """Make every allocation of 128 KiB or more its own mapping, given back to the system when freed.

    For fitting: glibc otherwise raises that threshold after the first large free, so the network's per-batch
    activations come from the heap, interleave with the patches held for the coreset and stay resident as holes
    (docs/benchmarks.md measures the fit's peak with and without). Not for serving, where a mapping per map would
    cost page faults on every image. Returns False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # no C library found, or one without mallopt
        return False
    return mallopt is not None and mallopt(M_MMAP_THRESHOLD, FIT_MMAP_THRESHOLD) == 1


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the file system `path` is on ("ext4", "tmpfs", ...), from /proc/self/mounts; None elsewhere."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target, best, kind = Path(path).resolve(), -1, None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = Path(fields[1].replace("\\040", " "))
        if target.is_relative_to(mount_point) and len(mount_point.parts) > best:
            best, kind = len(mount_point.parts), fields[2]
    return kind
