"""The line box's service, before and after the torch-free split: seconds from process start to /readyz 200,
resident memory after loading and after scoring, and ms per inspection, both services in one run.

    python scripts/bench_line_box.py --linebox-python .linebox/bin/python
    python scripts/bench_line_box.py --model-dir /tmp/models/magnetic_tile --rounds 5

The model is PatchCore, tf_efficientnet_lite0, 256 px, 1% coreset (two-level, as in the earlier service and
runtime runs), fitted on the category's training images by this checkout's `inspector fit` into --model-dir
unless a model is already there. Both services serve that same directory: the older code reads the current
format (format 1; the extra golden-set file is listed in the manifest and ignored), and the first image's score
from each is printed to show it.

"before" is commit --before (default 4088d54, whose service imports torch) taken with `git archive`, run by this
interpreter (the dev venv) with PYTHONPATH on the archived src. "after" is the package installed in the
torch-free --linebox-python venv (.ci/run builds it: `python3 -m venv .linebox && .linebox/bin/pip install .`);
rebuild it after changing the code, the script warns when it differs from this checkout.

Each start runs the package's `__main__` (`inspector serve`, through a few lines that list the imported modules
when the process exits) on a free loopback port, times it to the first /readyz 200, reads VmRSS and VmHWM
(peak) from /proc/PID/status, POSTs --posts test images one after another, reads them again and stops it with
SIGTERM. The two trees alternate start by start, the order flipping every round, so drift on a shared machine
hits both alike; servers are stopped on any exit of this script, SIGTERM included.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _bench_common import DEFAULT_DATA_ROOT, free_port, load_average, machine_info, markdown_table, thin, write_json

REPO = Path(__file__).resolve().parents[1]
# The bars: the torch-free service at most a third of the old one's memory and start-up time.
BARS = {"VmRSS after posts MiB": 1 / 3, "start to ready median s": 1 / 3}
# Modules that must stay out of the line box (torch, timm), or of a service without line links configured.
WATCHED = ("torch", "timm", "pymodbus", "asyncua", "paho")
FIT_SETTINGS = [
    "--model", "patchcore", "--backbone", "tf_efficientnet_lite0", "--image-size", "256",
    "--coreset-ratio", "0.01", "--set", "coreset_budget_mb=0",
]  # fmt: skip
# `python -m inspector`, plus the module list written at exit. Some uvicorn versions re-raise the SIGTERM they
# shut down on; with the default handler that would end the process before atexit, so SIGTERM exits instead.
MAIN = (
    "import atexit, runpy, signal, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sorted(sys.modules))))\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
    "runpy.run_module('inspector', run_name='__main__', alter_sys=True)\n"
)


def source_of(commit: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", commit, "src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def tree_digest(root: Path) -> str:
    """SHA-256 over a package folder's .py files (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def installed_package(python: str) -> Path:
    code = "import inspector, pathlib; print(pathlib.Path(inspector.__file__).parent)"
    return Path(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def status_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a live process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def torch_mapped(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@dataclass
class Tree:
    name: str
    python: str
    env: dict[str, str]
    ready_s: list[float] = field(default_factory=list)
    rss_ready_mib: list[float] = field(default_factory=list)
    hwm_ready_mib: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    hwm_mib: list[float] = field(default_factory=list)
    client_ms: list[float] = field(default_factory=list)  # median per start, POST round trip
    server_ms: list[float] = field(default_factory=list)  # median per start, the service's timings_ms.total
    torch_mapped: list[bool] = field(default_factory=list)
    modules: set[str] = field(default_factory=set)  # WATCHED modules seen at any exit
    exits_seen: int = 0  # starts whose module list was written
    first_score: float | None = None


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def one_start(tree: Tree, args: argparse.Namespace, images: list[bytes], work: Path) -> None:
    work.mkdir(parents=True)
    port, modules_file, log = free_port(), work / "modules.txt", work / "service.log"
    command = [tree.python, "-c", MAIN, str(modules_file), "serve", "--port", str(port)]
    command += ["--store-dir", str(work / "store"), "--model-dir", str(args.model_dir), "--threads", str(args.threads)]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as log_file:
        start = time.perf_counter()
        server = subprocess.Popen(command, env=tree.env, cwd=work, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(timeout=30) as client:
            while True:
                if server.poll() is not None:
                    sys.exit(f"{tree.name}: the service exited:\n{log.read_text()[-3000:]}")
                try:
                    if client.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - start > 300:
                    sys.exit(f"{tree.name}: not ready after 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.02)
            tree.ready_s.append(time.perf_counter() - start)
            memory = status_mib(server.pid)
            tree.rss_ready_mib.append(memory["VmRSS"])
            tree.hwm_ready_mib.append(memory["VmHWM"])
            client_ms, server_ms = [], []
            for i, image in enumerate(images):
                sent = time.perf_counter()
                answer = client.post(f"{url}/v1/inspect", files={"image": ("part.jpg", image, "image/jpeg")})
                client_ms.append((time.perf_counter() - sent) * 1e3)
                answer.raise_for_status()
                server_ms.append(float(answer.json()["timings_ms"]["total"]))
                if i == 0:
                    tree.first_score = float(answer.json()["score"])
            memory = status_mib(server.pid)
            tree.rss_mib.append(memory["VmRSS"])
            tree.hwm_mib.append(memory["VmHWM"])
            tree.client_ms.append(statistics.median(client_ms))
            tree.server_ms.append(statistics.median(server_ms))
            tree.torch_mapped.append(torch_mapped(server.pid))
    finally:
        stop(server)
    if modules_file.is_file():
        loaded = set(modules_file.read_text().split())
        tree.modules |= {name for name in WATCHED if name in loaded}
        tree.exits_seen += 1
    shutil.rmtree(work / "store", ignore_errors=True)


def ensure_model(args: argparse.Namespace) -> None:
    """Fit the benchmark's model into --model-dir with this checkout, unless one is there already."""
    if (args.model_dir / "manifest.json").is_file():
        print(f"reusing the model in {args.model_dir}", file=sys.stderr)
        return
    command = [str(Path(sys.executable).parent / "inspector"), "fit", "--data-root", str(args.data_root)]
    command += ["--category", args.category, "--out", str(args.model_dir), *FIT_SETTINGS]
    command += ["--threads", str(args.threads), "-q"]
    print(f"fitting: {' '.join(command)}", file=sys.stderr)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    print(f"fitted in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def cell(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="4088d54", help="the commit to compare with (default %(default)s)")
    parser.add_argument("--linebox-python", default=str(REPO / ".linebox" / "bin" / "python"))
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="model to serve, fitted there first if missing (default: <tmp>/inspector-bench-line-box/<category>)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="starts per tree, alternating (default %(default)s)")
    parser.add_argument("--posts", type=int, default=100, help="test images POSTed per start (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, fit and service (default %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.model_dir = args.model_dir or Path(tempfile.gettempdir()) / "inspector-bench-line-box" / args.category
    # SIGTERM (a background run stopped) unwinds like Ctrl-C, so the `finally` that stops the service runs.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(f"stopped by signal {signum}"))

    if not Path(args.linebox_python).is_file():
        sys.exit(f"no {args.linebox_python}: python3 -m venv .linebox && .linebox/bin/pip install .")
    if subprocess.run([args.linebox_python, "-c", "import torch"], capture_output=True).returncode == 0:
        sys.exit(f"{args.linebox_python} can import torch: it is not a line-box install")
    installed = installed_package(args.linebox_python)
    if tree_digest(installed) != tree_digest(REPO / "src" / "inspector"):
        print(
            f"warning: the line box's install ({installed}) differs from this checkout's src; rebuild it with "
            f"{Path(args.linebox_python).parent / 'pip'} install --no-deps .",
            file=sys.stderr,
        )
    ensure_model(args)
    test_images = sorted((args.data_root / args.category / "test").glob("*/*"))
    images = [p.read_bytes() for p in thin(test_images, args.posts)]  # spread: every defect type, not the first
    if not images:
        sys.exit(f"no test images under {args.data_root / args.category / 'test'}")

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="inspector-bench-linebox-") as tmp:
        work = Path(tmp)
        # No API keys (the service then binds to loopback only), and nothing from this checkout on the path.
        dropped = ("PYTHONPATH", "VIRTUAL_ENV", "INSPECTOR_CAMERA_KEY", "INSPECTOR_OPERATOR_KEY")
        base = {k: v for k, v in os.environ.items() if k not in dropped}
        base |= {"INSPECTOR_STORE_MIN_FREE_DISK_MB": "0", "INSPECTOR_OFFLINE": "1"}
        before_src = source_of(args.before, work / "before")
        trees = [
            Tree(f"before ({args.before[:8]}, dev venv)", sys.executable, {**base, "PYTHONPATH": str(before_src)}),
            Tree(f"after (line box {tree_digest(installed)})", args.linebox_python, base),
        ]
        for i in range(args.rounds):
            for tree in trees if i % 2 == 0 else trees[::-1]:
                one_start(tree, args, images, work / f"start-{i}-{trees.index(tree)}")
                print(
                    f"round {i + 1}/{args.rounds} {tree.name}: ready {tree.ready_s[-1]:.2f} s, "
                    f"VmRSS {tree.rss_ready_mib[-1]:.0f} -> {tree.rss_mib[-1]:.0f} MiB, "
                    f"VmHWM {tree.hwm_mib[-1]:.0f} MiB, {tree.client_ms[-1]:.1f} ms/inspection; "
                    f"load {load_average()}",
                    file=sys.stderr,
                )
    load_after = load_average()

    median = statistics.median
    rows = {
        "start to ready median s": [median(t.ready_s) for t in trees],
        "start to ready best s": [min(t.ready_s) for t in trees],
        "VmRSS at ready MiB": [median(t.rss_ready_mib) for t in trees],
        "VmHWM at ready MiB": [median(t.hwm_ready_mib) for t in trees],
        "VmRSS after posts MiB": [median(t.rss_mib) for t in trees],
        "VmHWM after posts MiB": [median(t.hwm_mib) for t in trees],
        "ms per inspection, client median": [median(t.client_ms) for t in trees],
        "ms per inspection, service total median": [median(t.server_ms) for t in trees],
    }
    before, after = trees
    table = []
    for metric, (b, a) in rows.items():
        bar = BARS.get(metric)
        verdict = "" if bar is None else ("met" if a <= bar * b else "MISSED") + f" (<= {bar:.2f})"
        table.append([metric, cell(b), cell(a), f"{a / b:.2f}", verdict])
    each = [" / ".join(f"{s:.2f}" for s in t.ready_s) for t in trees]
    table.insert(2, ["start to ready, each start s", *each, "", ""])
    table.append(["libtorch mapped", str(any(before.torch_mapped)), str(any(after.torch_mapped)), "", ""])
    table.append(
        [
            f"of {', '.join(WATCHED)}: imported",
            f"{', '.join(sorted(before.modules)) or 'none'} ({before.exits_seen} exits)",
            f"{', '.join(sorted(after.modules)) or 'none'} ({after.exits_seen} exits)",
            "",
            "",
        ]
    )
    table.append(["first image's score", f"{before.first_score:.4f}", f"{after.first_score:.4f}", "", ""])
    info = machine_info(packages=("onnxruntime", "faiss-cpu", "numpy", "fastapi", "uvicorn", "torch"))
    print(f"\n{args.rounds} starts per tree, alternating; {len(images)} POSTs each, one at a time; medians of starts")
    print(f"model: {args.model_dir}; service --threads {args.threads}")
    print(markdown_table(["", before.name, after.name, "after/before", "bar"], table))
    print(
        f"\nmachine: {info['cpu_model']}, {info['usable_cpus']} usable CPUs, {info['memory_gib']} GiB, "
        f"{info['platform']}, Python {info['python']}; {info['date']}; load average before {load_before}, "
        f"after {load_after}"
    )
    if args.json:
        results = {t.name: {k: v for k, v in vars(t).items() if k != "env"} for t in trees}
        for result in results.values():
            result["modules"] = sorted(result["modules"])
        write_json(args.json, {"machine": info, "load": [load_before, load_after], "rows": rows, "trees": results})


if __name__ == "__main__":
    main()
