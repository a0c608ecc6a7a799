"""A PatchCore fit under a hard memory limit: the coreset's patches held in memory, spilled to disk, or streamed.

Each run is `inspector fit` on one MVTec-layout category (default: magnetic_tile, all training images, the default
settings) in a cgroup of its own whose memory limit is `--limit-mb` (cgroup v1 `memory.limit_in_bytes` or v2
`memory.max`; needs root). The limit counts the page cache of the files the process writes and maps, which the
kernel reclaims before it kills anything, and the anonymous memory, which it cannot take back (no swap): a fit that
needs more anonymous memory than the limit is killed by the kernel's OOM killer. Runs, each a fresh process:

* `reference`: the default settings with no limit, for the bank the others are compared with;
* `held`: the default settings (the patches held in memory, within the 512 MiB coreset budget) under the limit;
* `spill`: `coreset_budget_mb=--budget-mb`, so the patches go to a temporary file (the default fallback);
* `stream`: the same budget with `coreset_fallback=stream` (chunks reduced as they come).

Reported per run: exit status, whether the OOM killer ended it, wall seconds, the cgroup's peak usage (page cache
included), and whether the saved bank is the reference's to the bit.

    sudo .venv/bin/python scripts/bench_fit_memory_cap.py --limit-mb 900 --set coreset_precision=float32
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _bench_common import DEFAULT_DATA_ROOT, bank_sha256, load_average, machine_info, markdown_table, write_json

REPO = Path(__file__).resolve().parents[1]
RUNS = ("reference", "held", "spill", "stream")


class Cgroup:
    """A memory-limited cgroup (v2 where mounted, else v1's memory controller), removed on `close`."""

    def __init__(self, name: str, limit_bytes: int | None) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        self.v2 = v2.exists() and "memory" in v2.read_text().split()
        self.path = Path("/sys/fs/cgroup" if self.v2 else "/sys/fs/cgroup/memory") / name
        self.path.mkdir()
        if limit_bytes is not None:
            (self.path / ("memory.max" if self.v2 else "memory.limit_in_bytes")).write_text(str(limit_bytes))

    def add_self(self) -> None:
        """Move the calling process into the group (run in the child between fork and exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_mib(self) -> float:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text()) / 2**20

    def oom_kills(self) -> int:
        """How many processes of the group the OOM killer ended (0 where the kernel does not count them)."""
        for line in (self.path / ("memory.events" if self.v2 else "memory.oom_control")).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def close(self) -> None:
        self.path.rmdir()


def bank_digest(model_dir: Path) -> str | None:
    """SHA-256 of the saved memory bank's values, or None when the fit wrote no model."""
    bank = model_dir / "memory_bank.npz"
    if not bank.exists():
        return None
    with np.load(bank) as arrays:
        return bank_sha256(arrays["memory_bank"])


def fit_in_cgroup(
    run: str, args: argparse.Namespace, out: Path, limit_bytes: int | None, settings: list[str]
) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "inspector",
        "fit",
        "--data-root",
        str(args.data_root),
        "--category",
        args.category,
        "--threads",
        str(args.threads),
        "--out",
        str(out),
        "-q",
    ]
    for setting in settings:
        command += ["--set", setting]
    group = Cgroup(f"inspector-fit-{os.getpid()}-{run}", limit_bytes)
    load_before = load_average()
    start = time.perf_counter()
    try:
        completed = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, preexec_fn=group.add_self, check=False
        )
        seconds = time.perf_counter() - start
        peak, kills = group.peak_mib(), group.oom_kills()
    finally:
        group.close()
    return {
        "run": run,
        "settings": settings,
        "limit_mib": None if limit_bytes is None else limit_bytes / 2**20,
        "returncode": completed.returncode,
        "oom_killed": kills > 0,
        "seconds": seconds,
        "cgroup_peak_mib": peak,
        "bank_sha256": bank_digest(out),
        "stdout": completed.stdout.strip(),
        "stderr_tail": completed.stderr.strip()[-600:],
        "load_average": {"before": load_before, "after": load_average()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--limit-mb", type=float, required=True, help="the cgroup's memory limit, MiB")
    parser.add_argument("--budget-mb", type=float, default=64.0, help="coreset_budget_mb of the spill/stream runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every run")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit = int(args.limit_mb * 2**20)
    budget = f"coreset_budget_mb={args.budget_mb:g}"
    plans: dict[str, tuple[int | None, list[str]]] = {
        "reference": (None, args.set),
        "held": (limit, args.set),
        "spill": (limit, [*args.set, budget]),
        "stream": (limit, [*args.set, budget, "coreset_fallback=stream"]),
    }
    work = Path(tempfile.mkdtemp(prefix="inspector-fit-cap-"))
    results = []
    try:
        for run in args.runs:
            print(f"[{run}] fitting ...", file=sys.stderr, flush=True)
            limit_bytes, settings = plans[run]
            result = fit_in_cgroup(run, args, work / run, limit_bytes, settings)
            results.append(result)
            print(f"[{run}] exit {result['returncode']}, {result['seconds']:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reference = next((r["bank_sha256"] for r in results if r["run"] == "reference"), None)
    rows = [
        [
            r["run"],
            " ".join(r["settings"]) or "defaults",
            "none" if r["limit_mib"] is None else f"{r['limit_mib']:.0f}",
            "OOM-killed" if r["oom_killed"] else f"exit {r['returncode']}",
            f"{r['seconds']:.1f}",
            f"{r['cgroup_peak_mib']:.0f}",
            "" if r["bank_sha256"] is None or reference is None else ("yes" if r["bank_sha256"] == reference else "no"),
        ]
        for r in results
    ]
    headers = ["run", "settings", "limit MiB", "result", "wall s", "cgroup peak MiB", "bank = reference"]
    print(markdown_table(headers, rows))
    if args.json:
        data = {"benchmark": "fit_memory_cap", "machine": machine_info(), "results": results}
        print(f"wrote {write_json(args.json, data)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
