"""The memory a model takes: measured (RSS growth across its load and warm-up) and estimated before loading (its
file sizes), and the budget check that refuses a load rather than let the kernel OOM-kill the whole service.

The file sizes underestimate what a model takes once loaded, and the measured growth includes onnxruntime's and
FAISS's one-time set-up for the first model or reads low when a load reuses freed memory (docs/benchmarks.md, "A
model's memory"). So the budget counts a loaded model at the larger of the two, and a model not yet loaded at its
file sizes: set the budget with margin.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from inspector.service.errors import ServiceError

MB = 1024 * 1024
_VMRSS = re.compile(r"^VmRSS:\s+(\d+) kB", re.MULTILINE)


class OverBudget(ServiceError):
    """A model load that would take the served models over `model_memory_budget_mb`; nothing was loaded."""

    status = 507
    reason = "memory_budget"


def rss_mb() -> float:
    """This process's resident memory now (Linux; 0 where /proc is missing, so the measurement reads 0)."""
    try:
        match = _VMRSS.search(Path("/proc/self/status").read_text())
    except OSError:
        return 0.0
    return int(match.group(1)) / 1024 if match else 0.0


def estimate_mb(model_dir: Path) -> float:
    """What a model will take once loaded, known before loading it: the size of its files (network and state; the
    calibrations are tiny). A lower bound: see the measurement above."""
    return sum(f.stat().st_size for f in Path(model_dir).rglob("*") if f.is_file()) / MB


def check_budget(name: str, estimate: float, loaded: Mapping[str, float], budget: float | None) -> None:
    """Raise `OverBudget` if loading `name` (`estimate` MiB) would take the `loaded` models' total over `budget`."""
    total = sum(loaded.values())
    if budget is None or total + estimate <= budget:
        return
    served = ", ".join(f"{n} {mb:.1f} MiB" for n, mb in loaded.items()) or "none"
    raise OverBudget(
        f"model '{name}' (estimated {estimate:.1f} MiB) not loaded: with the loaded models ({served}; total "
        f"{total:.1f} MiB) it would exceed model_memory_budget_mb {budget:g} MiB; unload a model or raise the budget"
    )
