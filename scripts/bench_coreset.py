"""The one-shot greedy coreset pass: an earlier commit's `greedy_coreset` against this checkout's, same patches.

    python scripts/bench_coreset.py                         # 210 magnetic_tile training images, 1% coreset
    python scripts/bench_coreset.py --images 762 --repeats 1
    python scripts/bench_coreset.py --features patches.npy  # any (N, D) float32 array

Patches are the rows PatchCore's fit hands its coreset (tf_efficientnet_lite0, stages 2+3, 256 px: 1,024 rows
of 152 floats per image), taken by running the fit up to its coreset and cached as .npy. The earlier commit's
`src/inspector/components/coreset.py` (`--before`, default 27a9027, the code before the blocked pass) is loaded
from git as a module of its own. Each run is a fresh spawned process that loads the patches, sets torch's threads
the way `inspector fit` does and selects `--ratio` of the rows from all of them at once; the two versions
alternate, the first of a round alternating too. Reported per run: ms per pick (wall time of the whole call over
the picks), picks per second, CPU time over wall time, peak RSS of the process and its rise over the patches
loaded; then the speedup of medians and whether every run of both picked the identical indices.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _bench_common import (
    DEFAULT_DATA_ROOT,
    cpu_seconds,
    current_rss_mib,
    limit_threads,
    list_dataset,
    load_average,
    machine_info,
    markdown_table,
    peak_rss_mib,
    run_isolated,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
CORESET_PATH = "src/inspector/components/coreset.py"


class _Captured(Exception):
    """Raised by the capturing coreset once it holds every patch, to end the fit there."""


def extract_patches(data_root: Path, category: str, images: int, out: Path) -> None:
    """Run PatchCore's fit (bench_patchcore's settings, budget off) until its coreset holds all patches; save them."""
    import torch

    from inspector.components.coreset import StreamingCoreset, _concatenate_consuming
    from inspector.models import patchcore
    from inspector.models.estimators import create_model

    class Capture(StreamingCoreset):
        def finalize(self, progress: bool = False) -> np.ndarray:
            self._join_loose()
            np.save(out, _concatenate_consuming(self._pending))
            raise _Captured

    torch.set_num_threads(2)
    train, _ = list_dataset(data_root, category, limit_train=images)
    patchcore.StreamingCoreset = Capture
    model = create_model(
        "patchcore",
        backbone="tf_efficientnet_lite0",
        layers=(2, 3),
        image_size=256,
        coreset_ratio=0.01,
        coreset_budget_mb=None,
        threads=2,
        batch_size=8,
        seed=0,
    )
    try:
        model.fit(train, progress=False)
    except _Captured:
        return
    raise RuntimeError("the fit finished without reaching its coreset")


def load_before(commit: str, into: Path) -> Path:
    """The earlier commit's coreset.py, written to `into`."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:{CORESET_PATH}"], capture_output=True, text=True, check=True
    ).stdout
    path = into / f"coreset_{commit}.py"
    path.write_text(source)
    return path


def select(module_path: str | None, features: str, ratio: float, threads: int, seed: int) -> dict[str, Any]:
    """In a fresh process: load the patches, run one greedy pass, report its time, memory and picks."""
    limit_threads(threads)
    import torch

    torch.set_num_threads(threads)  # as `inspector fit --threads` does
    if module_path is None:
        from inspector.components.coreset import greedy_coreset

        def run(x: np.ndarray, k: int) -> np.ndarray:
            return greedy_coreset(x, k, projection_dim=None, seed=seed, threads=threads)
    else:
        spec = importlib.util.spec_from_file_location("coreset_before", module_path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

        def run(x: np.ndarray, k: int) -> np.ndarray:
            return np.asarray(module.greedy_coreset(x, k, projection_dim=None, seed=seed))

    x = np.load(features)
    n_select = max(1, round(ratio * len(x)))
    rss_loaded = current_rss_mib()
    load = load_average()
    cpu, start = cpu_seconds(), time.perf_counter()
    picked = run(x, n_select)
    wall = time.perf_counter() - start
    return {
        "seconds": wall,
        "cpu_over_wall": (cpu_seconds() - cpu) / wall,
        "ms_per_pick": wall / n_select * 1e3,
        "picks_per_s": n_select / wall,
        "peak_rss_mib": peak_rss_mib(),
        "rss_rise_mib": peak_rss_mib() - rss_loaded,
        "load_before": load,
        "load_after": load_average(),
        "picked": picked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--images", type=int, default=210, help="training images, thinned evenly")
    parser.add_argument("--features", type=Path, help="an (N, D) float32 .npy instead of extracting patches")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "inspector-bench-coreset")
    parser.add_argument("--before", default="27a9027", help="commit whose greedy_coreset is the baseline")
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    features = args.features
    if features is None:
        features = args.cache / f"{args.category}-{args.images}.npy"
        if not features.exists():
            args.cache.mkdir(parents=True, exist_ok=True)
            print(f"extracting patches of {args.images} {args.category} images into {features}", flush=True)
            run_isolated(extract_patches, args.data_root, args.category, args.images, features)
    shape = np.load(features, mmap_mode="r").shape
    print(f"patches {shape[0]} x {shape[1]} float32 ({shape[0] * shape[1] * 4 / 2**20:.0f} MiB), from {features}")

    with tempfile.TemporaryDirectory() as tmp:
        before = str(load_before(args.before, Path(tmp)))
        versions = {f"before ({args.before})": before, "after (this checkout)": None}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
        for round_ in range(args.repeats):
            order = list(versions) if round_ % 2 == 0 else list(reversed(versions))
            for name in order:
                result = run_isolated(select, versions[name], str(features), args.ratio, args.threads, args.seed)
                runs[name].append(result)
                print(
                    f"round {round_ + 1} {name}: {result['ms_per_pick']:.2f} ms/pick, "
                    f"cpu/wall {result['cpu_over_wall']:.2f}, load {result['load_before']}",
                    flush=True,
                )

    reference = runs[next(iter(versions))][0]["picked"]
    identical = all(np.array_equal(r["picked"], reference) for rs in runs.values() for r in rs)
    rows = []
    for name, rs in runs.items():
        ms = [r["ms_per_pick"] for r in rs]
        rows.append(
            [
                name,
                " / ".join(f"{m:.2f}" for m in ms),
                f"{statistics.median(ms):.2f}",
                f"{1e3 / statistics.median(ms):.1f}",
                " / ".join(f"{r['cpu_over_wall']:.2f}" for r in rs),
                f"{max(r['peak_rss_mib'] for r in rs):.0f}",
                f"{max(r['rss_rise_mib'] for r in rs):.0f}",
            ]
        )
    medians = [statistics.median(r["ms_per_pick"] for r in rs) for rs in runs.values()]
    headers = ["version", "ms/pick, each run", "median ms/pick", "picks/s", "cpu/wall", "peak RSS MiB", "RSS rise MiB"]
    print()
    print(markdown_table(headers, rows))
    print(f"\nspeedup (median before / median after): {medians[0] / medians[1]:.2f}x")
    print(f"picks: {len(reference)} of {shape[0]}, identical in every run of both: {identical}")
    print(f"load average now: {load_average()}")
    if args.json:
        for rs in runs.values():
            for r in rs:
                r["picked"] = r["picked"][:20]
        write_json(
            args.json,
            {
                "machine": machine_info(("torch", "numpy")),
                "shape": shape,
                "runs": runs,
                "speedup": medians[0] / medians[1],
                "identical": identical,
                "env_threads": os.environ.get("OMP_NUM_THREADS"),
            },
        )


if __name__ == "__main__":
    main()
