"""The process's CPU threads and memory: set once at an entry point, read anywhere.

Thread counts are process-wide for FAISS (OpenMP) and torch, so they are set here by whoever starts the process
(the CLI command, the service), never by a model's constructor: two models in one service must not change each
other's threads. onnxruntime takes its thread count per session instead, so runners are given it directly.
"""

from __future__ import annotations

import os
import resource
import sys


def cpu_threads(threads: int | None = None) -> int:
    """The thread count to use: as asked, else every core this process may run on."""
    if threads:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
