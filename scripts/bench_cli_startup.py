"""How long `inspector --help` takes, and which heavy modules printing it imports, for one or two source trees.

    python scripts/bench_cli_startup.py                           # this checkout
    python scripts/bench_cli_startup.py --before 4088d54          # and the tree of an earlier commit, same run

An earlier commit's `src/` is taken with `git archive` into a temporary folder and run with PYTHONPATH ahead of
this checkout's install, so both trees run under the same interpreter and packages. Times are wall-clock seconds
of a fresh interpreter, best and median of `--repeats` runs, alternating the trees so drift hits both alike.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "numpy", "pydantic", "yaml", "faiss", "onnxruntime", "cv2", "scipy")


def source_of(commit: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run(src: Path, code: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="an earlier commit to measure in the same run")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this checkout": REPO / "src"}
        if args.before:
            trees[f"commit {args.before[:8]}"] = source_of(args.before, Path(tmp))
        help_code = (
            "import contextlib, sys\nsys.argv = ['inspector', '--help']\nfrom inspector.cli import main\n"
            "with contextlib.suppress(SystemExit):\n    main()"
        )
        modules_code = (
            "import sys\nfrom inspector.cli import build_parser\nbuild_parser().format_help()\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
        )
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.repeats):
            for name, src in trees.items():
                times[name].append(run(src, help_code)[0])
        print(f"{'tree':<20}{'best s':>8}{'median s':>10}  heavy modules imported to print the help")
        for name, src in trees.items():
            loaded = set(run(src, modules_code)[1].split())
            heavy = ", ".join(m for m in HEAVY if m in loaded) or "none"
            print(f"{name:<20}{min(times[name]):>8.3f}{statistics.median(times[name]):>10.3f}  {heavy}")


if __name__ == "__main__":
    main()
