"""The line box's service, before and after the torch-free split: seconds from process start to /readyz 200,
and resident memory after serving, in one run.

    python scripts/bench_line_box.py --model-dir /tmp/models/magnetic_tile \
        --images '../shared/datasets/magnetic_tile/test/*/*'
    python scripts/bench_line_box.py            # fits a small PatchCore on synthetic data first (needs torch)

"before" is commit --before (default 4088d54, whose service imports torch) taken with `git archive`, run by this
interpreter (the dev venv) with PYTHONPATH on the archived src. "after" is the package installed in the
torch-free --linebox-python venv (.ci/run builds it: `python3 -m venv .linebox && .linebox/bin/pip install .`);
rebuild it after changing the code, the script warns when it differs from this checkout.

Each start runs `python -m inspector serve` on a free port, times it to the first /readyz 200, POSTs --posts
images one after another, then reads VmRSS and VmHWM (peak) from /proc/PID/status and stops it with SIGTERM.
The trees alternate start by start, so drift on a shared machine hits both alike. Both serve the same model
directory, and the first image's score from each is printed: the older code reads the current format.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _bench_common import machine_info, markdown_table, write_json

REPO = Path(__file__).resolve().parents[1]
BARS = {"VmRSS after posts MiB": 1 / 3, "start to ready best s": 1 / 3}


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def torch_mapped(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@dataclass
class Tree:
    name: str
    command: list[str]
    env: dict[str, str]
    ready_s: list[float] = field(default_factory=list)
    rss_ready_mib: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    hwm_mib: list[float] = field(default_factory=list)
    torch: list[bool] = field(default_factory=list)
    first_score: float | None = None


def one_start(tree: Tree, args: argparse.Namespace, images: list[bytes], store: Path) -> None:
    port = free_port()
    command = [*tree.command, "serve", "--port", str(port), "--store-dir", str(store)]
    command += [arg for d in args.model_dir for arg in ("--model-dir", str(d))]
    if args.threads:
        command += ["--threads", str(args.threads)]
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    server = subprocess.Popen(
        command, env=tree.env, cwd=store.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        with httpx.Client(timeout=30) as client:
            while True:
                if server.poll() is not None:
                    sys.exit(f"{tree.name}: the service exited:\n{server.communicate()[1].decode()[-3000:]}")
                try:
                    if client.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - start > 300:
                    sys.exit(f"{tree.name}: not ready after 300 s")
                time.sleep(0.02)
            tree.ready_s.append(time.perf_counter() - start)
            tree.rss_ready_mib.append(status_kib(server.pid)["VmRSS"] / 1024)
            for i in range(args.posts):
                answer = client.post(f"{url}/v1/inspect", files={"image": ("part.png", images[i % len(images)])})
                answer.raise_for_status()
                if i == 0:
                    tree.first_score = float(answer.json()["score"])
            memory = status_kib(server.pid)
            tree.rss_mib.append(memory["VmRSS"] / 1024)
            tree.hwm_mib.append(memory["VmHWM"] / 1024)
            tree.torch.append(torch_mapped(server.pid))
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def synthetic_model(into: Path, threads: int | None) -> tuple[Path, list[Path]]:
    """A PatchCore fitted by this checkout on a generated category, and its test images."""
    from inspector.data import Dataset
    from inspector.data.synthetic import make_category
    from inspector.models.estimators import PatchCore

    make_category(into, "synthetic", n_train=32, n_test_good=10, n_test_defect_per_type=5, size=256, seed=0)
    dataset = Dataset(into, "synthetic")
    model = PatchCore(image_size=256, coreset_ratio=0.1, threads=threads).fit(dataset.train(), progress=False)
    return model.save(into / "model"), [s.path for s in dataset.test()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="4088d54", help="the commit to compare with (default %(default)s)")
    parser.add_argument("--linebox-python", default=str(REPO / ".linebox" / "bin" / "python"))
    parser.add_argument("--model-dir", type=Path, action="append", help="model to serve (default: fit a synthetic one)")
    parser.add_argument("--images", action="append", default=[], help="image files or globs to POST")
    parser.add_argument("--starts", type=int, default=5, help="starts per tree (default %(default)s)")
    parser.add_argument("--posts", type=int, default=100, help="images POSTed per start (default %(default)s)")
    parser.add_argument("--threads", type=int, help="CPU threads per worker, both trees (default: the service's)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    probe = subprocess.run([args.linebox_python, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        sys.exit(f"{args.linebox_python} can import torch: it is not a line-box install")

    with tempfile.TemporaryDirectory(prefix="inspector-bench-linebox-") as tmp:
        work = Path(tmp)
        paths = sorted(Path(p) for pattern in args.images for p in glob.glob(pattern) if Path(p).is_file())
        if not args.model_dir:
            model_dir, synthetic_images = synthetic_model(work / "synthetic", args.threads)
            args.model_dir = [model_dir]
            paths = paths or synthetic_images
        if not paths:
            sys.exit("no images: give --images FILE_OR_GLOB")
        if len(paths) > args.posts:  # an even spread over the sorted list: every defect type, not just the first
            paths = [paths[i * len(paths) // args.posts] for i in range(args.posts)]
        images = [p.read_bytes() for p in paths]

        installed = installed_package(args.linebox_python)
        if tree_digest(installed) != tree_digest(REPO / "src" / "inspector"):
            print(
                f"warning: the line box's install ({installed}) differs from this checkout's src; rebuild it with "
                f"{Path(args.linebox_python).parent / 'pip'} install --no-deps .",
                file=sys.stderr,
            )
        # No API keys (the service then binds to loopback only), and nothing from this checkout on the path.
        dropped = ("PYTHONPATH", "VIRTUAL_ENV", "INSPECTOR_CAMERA_KEY", "INSPECTOR_OPERATOR_KEY")
        base = {k: v for k, v in os.environ.items() if k not in dropped}
        base["INSPECTOR_STORE_MIN_FREE_DISK_MB"] = "0"
        before_src = source_of(args.before, work / "before")
        trees = [
            Tree(
                f"before ({args.before[:8]}, dev venv)",
                [sys.executable, "-m", "inspector"],
                {**base, "PYTHONPATH": str(before_src)},
            ),
            Tree(
                f"after (this tree {tree_digest(installed)}, line box)", [args.linebox_python, "-m", "inspector"], base
            ),
        ]
        for i in range(args.starts):
            for tree in trees:
                one_start(tree, args, images, work / f"store-{len(tree.ready_s)}-{trees.index(tree)}")
                print(f"start {i + 1}/{args.starts} {tree.name}: ready in {tree.ready_s[-1]:.2f} s", file=sys.stderr)

    rows = {
        "start to ready best s": [min(t.ready_s) for t in trees],
        "start to ready median s": [statistics.median(t.ready_s) for t in trees],
        "VmRSS at ready MiB": [statistics.median(t.rss_ready_mib) for t in trees],
        "VmRSS after posts MiB": [statistics.median(t.rss_mib) for t in trees],
        "VmHWM (peak) MiB": [statistics.median(t.hwm_mib) for t in trees],
    }
    before, after = trees
    table = []
    for metric, (b, a) in rows.items():
        bar = BARS.get(metric)
        verdict = "" if bar is None else ("met" if a <= bar * b else "MISSED") + f" (<= {bar:.2f})"
        table.append([metric, f"{b:.2f}", f"{a:.2f}", f"{a / b:.2f}", verdict])
    table.append(["libtorch mapped", str(any(before.torch)), str(any(after.torch)), "", ""])
    table.append(["first image's score", f"{before.first_score:.4f}", f"{after.first_score:.4f}", "", ""])
    info = machine_info(packages=("onnxruntime", "faiss-cpu", "numpy", "fastapi", "uvicorn", "torch"))
    print(f"\n{args.starts} starts per tree, {args.posts} POSTs each ({len(paths)} distinct images); medians of starts")
    print(f"model: {', '.join(map(str, args.model_dir))}")
    print(markdown_table(["", before.name, after.name, "after/before", "bar"], table))
    print(
        f"\nmachine: {info['cpu_model']}, {info['usable_cpus']} usable CPUs, {info['memory_gib']} GiB, "
        f"{info['platform']}, Python {info['python']}; {info['date']}"
    )
    if args.json:
        results = {t.name: {k: v for k, v in vars(t).items() if k not in ("env",)} for t in trees}
        write_json(args.json, {"machine": info, "rows": rows, "trees": results})


if __name__ == "__main__":
    main()
