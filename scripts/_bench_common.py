"""Shared helpers for the benchmark scripts in this folder (not part of the `inspector` package).

What every benchmark needs the same way, so that numbers from different scripts are comparable:

* `limit_threads` pins OpenMP/MKL/BLAS and torch to N threads (call before importing torch in a process);
  `set_up_fit_process` also sets what `inspector fit` sets for its process (torch and FAISS pools, allocator);
* `list_dataset` lists an MVTec-style category, optionally thinned for quick trial runs;
* `load_masks` reads ground truth at the evaluation size (nearest neighbour, binarised > 127);
* `run_isolated` runs a function in a fresh 'spawn' subprocess, so peak memory is per tool;
* `peak_rss_mib` / `current_rss_mib` measure memory the same way for every tool;
* `time_each` times a per-image call after a warm-up (wall and CPU time); `cpu_seconds` and `load_average`
  help judge timings taken on a shared machine;
* `load_offline_weights` puts inspector's offline backbone weights into an anomalib feature extractor, and
  `anomalib_input` makes its input from decoded images the way inspector's network gets them;
* `evaluate_maps` computes image AUROC, pixel AUROC and AUPRO the same way for every tool, and
  `SUMMARY_COLUMNS` / `STAGE_COLUMNS` lay them out;
* `machine_info`, `markdown_table` and `write_json` report the results.

Heavy imports (torch, anomalib, inspector.models) happen inside functions: spawned children import the calling
script again, and nothing one tool needs should be loaded into the other tool's process.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# imported up front: a run outlasts later edits to src
from inspector.evaluation.metrics import aupro, auroc, pixel_auroc

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


# ---- threads and processes ---------------------------------------------------------------------------


def limit_threads(n: int) -> None:
    """Set the thread-count environment (inherited by children) and, where already imported, torch and cv2."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(n)


def set_up_fit_process(n: int) -> None:
    """`limit_threads`, then what `inspector fit` sets once for its process: torch's and FAISS's thread pools
    and the allocator's mapping threshold (`return_large_frees_to_the_system`).

    inspector's estimators set no process-wide state (the entry point does); their `threads` parameter is
    onnxruntime's per-session count only, so a benchmark that fits must call this once.
    """
    import torch

    from inspector.common.system import return_large_frees_to_the_system
    from inspector.components.knn import set_search_threads

    limit_threads(n)
    torch.set_num_threads(n)
    set_search_threads(n)
    return_large_frees_to_the_system()


def log_termination() -> None:
    """Say in the log when this run is stopped by SIGTERM/SIGINT/SIGHUP, then exit at once (children included).

    Long benchmarks run in the background; without this a killed run leaves a log that just stops.
    """

    def stop(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        print(f"\n[bench] stopped by {name} at {datetime.now().isoformat(timespec='seconds')}", file=sys.stderr)
        sys.stderr.flush()
        for child in multiprocessing.active_children():
            child.kill()
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)


def run_isolated(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` in a fresh spawned process and return its (picklable) result.

    `fn` must be importable by the child (module level in the script). Each call starts a new interpreter,
    so `peak_rss_mib()` inside `fn` sees only that call's memory.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (getrusage ru_maxrss), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def memory_status_mib() -> dict[str, float]:
    """This process's memory lines of /proc/self/status (VmRSS, RssAnon, RssFile, ...) in MiB; empty without /proc."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value.split()[0]) / 1024 for key, value in (line.split(":", 1) for line in lines) if "kB" in value}


def current_rss_mib() -> float:
    """Resident memory now (VmRSS), MiB; falls back to the peak where /proc is missing."""
    return memory_status_mib().get("VmRSS", peak_rss_mib())


class MemorySampler:
    """Peak anonymous and file-backed resident memory (RssAnon, RssFile) of this process while in the `with`, MiB.

    ru_maxrss counts the pages of mapped files as resident, though the kernel drops them under memory pressure;
    the anonymous peak is what a memory limit cannot take back. Sampled every `interval` seconds by a thread."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_anon_mib = self.peak_file_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        status = memory_status_mib()
        self.peak_anon_mib = max(self.peak_anon_mib, status.get("RssAnon", 0.0))
        self.peak_file_mib = max(self.peak_file_mib, status.get("RssFile", 0.0))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ---- data ------------------------------------------------------------------------------------------------


def thin(items: Sequence[Any], limit: int | None) -> list[Any]:
    """At most `limit` items spread evenly over the sequence (keeps every class of a sorted test list)."""
    if not limit or limit >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def list_dataset(
    root: str | Path,
    category: str,
    limit_train: int | None = None,
    limit_test: int | None = None,
    require_masks: bool = True,
):
    """(train image paths, test samples) of an MVTec-style category, thinned evenly when limits are given."""
    from inspector.data import Dataset

    dataset = Dataset(root, category)
    train = thin(dataset.train(), limit_train)
    test = thin(dataset.test(), limit_test)
    missing = [s.path.name for s in test if s.is_defect and s.mask_path is None]
    if missing and require_masks:
        raise FileNotFoundError(f"{len(missing)} defect images have no ground-truth mask, e.g. {missing[0]}")
    return train, test


def load_masks(samples: Sequence[Any], size: tuple[int, int]) -> np.ndarray:
    """Ground-truth masks, bool (N, H, W) at `size`: resized nearest-neighbour, pixel > 127; good = empty."""
    from inspector.data.io import read_mask

    masks = np.zeros((len(samples), *size), dtype=bool)
    for i, sample in enumerate(samples):
        if sample.mask_path is not None:
            masks[i] = read_mask(sample.mask_path, size)
    return masks


# ---- timing ----------------------------------------------------------------------------------------------


def time_each(fn: Callable[[Any], Any], inputs: Sequence[Any], warmup: Sequence[Any] = ()) -> tuple[list, list, list]:
    """Call `fn` on each warm-up input (untimed), then on each input with its own timing.

    Returns (results, wall milliseconds per call, process CPU milliseconds per call). CPU time (all threads of
    this process) is less disturbed than wall time when other work shares the machine.
    """
    for item in warmup:
        fn(item)
    results, wall_ms, cpu_ms = [], [], []
    for item in inputs:
        cpu, wall = time.process_time(), time.perf_counter()
        results.append(fn(item))
        wall_ms.append((time.perf_counter() - wall) * 1e3)
        cpu_ms.append((time.process_time() - cpu) * 1e3)
    return results, wall_ms, cpu_ms


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads), seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine makes timings unreliable."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def summarize_ms(ms: Sequence[float]) -> dict[str, float]:
    """Median, mean, 90th percentile, min and max of per-call milliseconds."""
    return {
        "median": statistics.median(ms),
        "mean": statistics.fmean(ms),
        "p90": float(np.percentile(ms, 90)),
        "min": min(ms),
        "max": max(ms),
    }


# ---- anomalib --------------------------------------------------------------------------------------------


WEIGHTS_MEAN = WEIGHTS_STD = 0.5  # the offline EfficientNet-Lite weights' input convention


def anomalib_input(size: int) -> Callable[[list[np.ndarray]], Any]:
    """Decoded RGB images -> anomalib's input: inspector's resize to size x size (the float32 0..255 NCHW batch
    inspector's network gets), then scaled as the weights expect, (x/255 - 0.5) / 0.5."""
    import torch

    from inspector.features.preprocess import Preprocessing

    preprocess = Preprocessing((size, size))

    def to_input(images: list[np.ndarray]) -> torch.Tensor:
        return (torch.from_numpy(preprocess(images)) / 255.0 - WEIGHTS_MEAN) / WEIGHTS_STD

    return to_input


def load_offline_weights(extractor: Any, backbone: str, out_indices: Sequence[int]) -> str:
    """Load inspector's offline weights for `backbone` into an anomalib `TimmFeatureExtractor`.

    The timm model lives at `extractor.feature_extractor`; the state dict comes from
    `inspector.features.backbones.load_backbone` (the same tensors inspector fits with) and is loaded strictly,
    so a missing or unexpected key raises. Returns where the weights came from.
    """
    from inspector.features.backbones import load_backbone

    module, info = load_backbone(backbone, tuple(out_indices), allow_download=False)
    extractor.feature_extractor.load_state_dict(module.state_dict(), strict=True)
    return info.weights_source


# ---- reporting -------------------------------------------------------------------------------------------


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(packages: Sequence[str] = ("torch", "timm", "onnxruntime", "faiss-cpu", "anomalib")) -> dict:
    """Where and with what the numbers were taken."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in packages},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def bank_sha256(bank: np.ndarray) -> str:
    """SHA-256 of a memory bank's float32 values: whether two fits picked the same bank, to the bit."""
    return hashlib.sha256(np.ascontiguousarray(bank, dtype=np.float32).tobytes()).hexdigest()


def source_digest(package: str) -> str:
    """SHA-256 over a package's .py files (names and bytes): which code was measured, without a commit."""
    import importlib

    root = Path(importlib.import_module(package).__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


AUPRO_FPR_LIMIT = 0.3


def evaluate_maps(result: dict, labels: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO (FPR limit 0.3) of one tool's scores and maps."""
    return {
        "image_auroc": auroc(labels, result["scores"]),
        "pixel_auroc": pixel_auroc(masks, result["maps"]),
        "aupro": aupro(masks, result["maps"], AUPRO_FPR_LIMIT),
    }


# The first table every side-by-side prints: accuracy, latency, fit time and memory per tool.
SUMMARY_COLUMNS = {
    "image AUROC": lambda r: f"{r['metrics']['image_auroc']:.4f}",
    "pixel AUROC": lambda r: f"{r['metrics']['pixel_auroc']:.4f}",
    f"AUPRO@{AUPRO_FPR_LIMIT}": lambda r: f"{r['metrics']['aupro']:.4f}",
    "median ms/img": lambda r: f"{r['ms_summary']['median']:.1f}",
    "fit s": lambda r: f"{r['fit']['seconds']:.1f}",
    "peak RSS MiB (fit)": lambda r: f"{r['fit']['peak_rss_mib']:.0f}",
}
STAGE_COLUMNS = {
    f"ms: {stage}": lambda r, stage=stage: f"{r['stages_ms'][stage]:.1f}"
    for stage in ("preprocess", "features", "search", "postprocess")
}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table with aligned columns; floats as given (format them before)."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def report_rows(rows: Sequence[dict[str, Any]], json_path: Path | None, threads: int) -> None:
    """Print rows (dicts that may lack some columns) as one Markdown table; with `json_path`, also save them with
    the machine's description."""
    headers = list(dict.fromkeys(key for row in rows for key in row))
    print(markdown_table(headers, [[row.get(h, "") for h in headers] for row in rows]))
    if json_path:
        write_json(json_path, {"machine": machine_info(), "threads": threads, "rows": list(rows)})


def write_json(path: str | Path, data: dict) -> Path:
    """Write `data` as indented JSON (numpy scalars and arrays converted), creating parent folders."""

    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=convert) + "\n")
    return path


# ---- added for bench_padim_fastflow.py ---------------------------------------------------------------------


def load_offline_state(module: Any, backbone: str, out_indices: Sequence[int]) -> str:
    """Like `load_offline_weights`, for a bare timm `features_only` module (strict; returns the weights' source)."""
    from inspector.features.backbones import load_backbone

    source, info = load_backbone(backbone, tuple(out_indices), allow_download=False)
    module.load_state_dict(source.state_dict(), strict=True)
    return info.weights_source


def time_scoring(score_one: Callable[[np.ndarray], tuple], warmup_paths: Sequence[Path], test_paths: Sequence[Path]):
    """Decode the test images, warm up on `warmup_paths`, then time `score_one` once per test image.

    `score_one(image)` returns (image score, HxW map, per-stage ms or None). Returns a dict with `scores` (N,),
    `maps` (N, H, W) float32, wall `ms` and `cpu_ms` per image, and `stages_ms` (median per stage, if any).
    """
    from inspector.data import read_image

    images = [read_image(p) for p in test_paths]
    warmup = [read_image(p) for p in warmup_paths]
    results, ms, cpu_ms = time_each(score_one, images, warmup)
    stages = [r[2] for r in results if r[2]]
    return {
        "scores": np.array([r[0] for r in results], dtype=np.float64),
        "maps": np.stack([r[1] for r in results]).astype(np.float32, copy=False),
        "ms": ms,
        "cpu_ms": cpu_ms,
        "stages_ms": {k: float(np.median([t[k] for t in stages])) for k in stages[0]} if stages else {},
    }


def forward_stage_ms(
    score_one: Callable[[np.ndarray], Any], images: Sequence[np.ndarray], backbone: Any, map_generator: Any
) -> dict[str, float]:
    """Median ms per stage of a torch model's scoring, from forward hooks, in a separate (untimed) pass.

    preprocess: until `backbone` starts; features: `backbone`; search: from the backbone's end until
    `map_generator` starts; postprocess: `map_generator` and anything after it.
    """
    stamps: dict[str, float] = {}

    def mark(name: str):
        return lambda *_: stamps.__setitem__(name, time.perf_counter())  # returns None: output unchanged

    handles = [
        backbone.register_forward_pre_hook(mark("features_start")),
        backbone.register_forward_hook(mark("features_end")),
        map_generator.register_forward_pre_hook(mark("map_start")),
    ]
    rows = []
    try:
        for image in images:
            start = time.perf_counter()
            score_one(image)
            end = time.perf_counter()
            rows.append(
                {
                    "preprocess": stamps["features_start"] - start,
                    "features": stamps["features_end"] - stamps["features_start"],
                    "search": stamps["map_start"] - stamps["features_end"],
                    "postprocess": end - stamps["map_start"],
                }
            )
    finally:
        for handle in handles:
            handle.remove()
    return {k: float(np.median([r[k] for r in rows])) * 1e3 for k in rows[0]}


def free_port() -> int:
    """A TCP port free on loopback now, for a service a benchmark starts."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(
    command: Sequence[str], log: Path, url: str, env: dict[str, str] | None = None, timeout_s: float = 180
):
    """Start `inspector serve` (`command`) with its output appended to `log`; return the process once `url`'s
    /readyz answers 200, or exit naming the log when it dies or is not ready in time."""
    import subprocess

    import httpx

    with open(log, "ab") as out:
        server = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, env=env or dict(os.environ))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the service exited with {server.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.kill()
    raise SystemExit(f"the service was not ready after {timeout_s:g} s; see {log}")


def stop_service(server: Any) -> None:
    """Stop a started service as Ctrl-C does (it finishes admitted inspections), killing it after 30 s."""
    import subprocess

    server.send_signal(signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
