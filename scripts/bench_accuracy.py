"""Accuracy across data sets: inspector's PatchCore variants beside anomalib 2.7.0's PatchCore and MH-PatchCore.

Issue 14 asks for a lead that is not noise, on more than one data set, before a default changes. Each job fits
one model on one data set and scores that data set's test images, in its own fresh process; all jobs of a run
share the images, the backbone weights and the protocol:

* Magnetic-Tile defects (Huang et al., 2018), `../shared/datasets/magnetic_tile`: all train/good images, all test
  images; image AUROC, and pixel AUROC and AUPRO@0.3 against its masks at 256x256.
* ELPV solar cells (Buerhop-Lutz et al., 2018; Deitsch et al., 2019), the PyPI package `elpv-dataset`
  (CC BY-NC-SA 4.0, a benchmark only, never shipped), the protocol of `bench_image_score.py`: per cell type
  (mono, poly), 250 randomly drawn cells of defect probability 0 (seed 0) for fitting, the other
  probability-0 cells (good) and all probability-1 cells (defective) for testing; image AUROC only (no masks).
  The cells are written once as PNG files in the MVTec layout under `--elpv-root`, so every tool reads files.

Tools: `anomalib` (PatchcoreModel, as in `bench_patchcore.py`), `mh-patchcore` (anomalib's MHPatchcoreModel,
its three fitting passes driven without Lightning: PCA, shrunk covariance, merge-reduce bank of 1,000), both on
tf_efficientnet_lite0 blocks.2 + blocks.4 with inspector's offline weights; and inspector's PatchCore with the
variants in `VARIANTS` (default settings otherwise: lite0, stages 2+3, 256 px, 1% coreset, seed 0).

Jobs run `--workers` at a time (each fresh process gets `--threads` threads), longest first. anomalib's
coreset on magnetic_tile takes 46 minutes alone on two threads and about two hours on one thread beside the
other jobs; `--skip magnetic_tile:anomalib` leaves it out. Fit times are not comparable across jobs;
`bench_patchcore.py` measures time and memory on a quiet machine. Every finished job is appended to
`--jsonl` at once, so a long run that is cut short keeps what it finished, and running the same command again
runs only the jobs not in the file yet; `--report FILE` prints the tables from such a file.

    python scripts/bench_accuracy.py --anomalib-site /tmp/anomalib-site --jsonl /tmp/bench_accuracy.jsonl
    python scripts/bench_accuracy.py --report /tmp/bench_accuracy.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from _bench_common import (
    DEFAULT_DATA_ROOT,
    anomalib_input,
    evaluate_maps,
    limit_threads,
    list_dataset,
    load_average,
    load_masks,
    load_offline_weights,
    machine_info,
    markdown_table,
    peak_rss_mib,
    set_up_fit_process,
    time_scoring,
)
from bench_patchcore import ANOMALIB_LAYERS, BACKBONE, INSPECTOR_LAYERS, Config
from bench_patchcore import run_anomalib as run_anomalib_patchcore

ELPV_TRAIN = 250
SIZE = 256
DATASETS = ("magnetic_tile", "elpv_mono", "elpv_poly")
# inspector's PatchCore variants: name -> create_model keywords on top of the defaults.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "lite1": {"backbone": "tf_efficientnet_lite1"},
    "lite2": {"backbone": "tf_efficientnet_lite2"},
    "stages 1-3": {"layers": (1, 2, 3)},
    "320 px": {"image_size": 320},
    "whiten": {"projection": "whiten"},
    "pca64 + ivf16": {"projection": "pca", "projection_dim": 64, "index": "ivf", "nprobe": 16},
    "hnsw ef16": {"index": "hnsw", "ef_search": 16},
    "hnsw ef8": {"index": "hnsw", "ef_search": 8},
    "pca64 + hnsw ef8": {"projection": "pca", "projection_dim": 64, "index": "hnsw", "ef_search": 8},
    "fp16 patches": {"coreset_precision": "float16"},
    "fp32 patches": {"coreset_precision": "float32"},
    "blur 2": {"blur_sigma": 2.0},
    "blur 8": {"blur_sigma": 8.0},
    "bare distance": {"density_neighbors": None},
    "map peak": {"map_top_fraction": 0.0},
    "bare distance + map peak": {"density_neighbors": None, "map_top_fraction": 0.0},
    "hnsw m16": {"hnsw_m": 16},
    "hnsw m24": {"hnsw_m": 24},
}
ANOMALIB_TOOLS = ("anomalib", "mh-patchcore")
# Rough single-thread minutes per job, to start the longest first.
EXPECTED_MINUTES = {"anomalib": 30.0, "mh-patchcore": 5.0}


# ---- data ------------------------------------------------------------------------------------------------


def write_elpv(root: Path, seed: int = 0) -> None:
    """The ELPV cells as MVTec-layout folders `elpv_mono` and `elpv_poly` under `root` (once)."""
    import cv2
    from elpv_dataset.utils import load_dataset

    if all((root / f"elpv_{kind}" / "test").is_dir() for kind in ("mono", "poly")):
        return
    images, probability, cell_type = load_dataset()
    rng = np.random.default_rng(seed)
    for kind in ("mono", "poly"):
        good = rng.permutation(np.flatnonzero((probability == 0) & (cell_type == kind)))
        defective = np.flatnonzero((probability == 1) & (cell_type == kind))
        split = {"train/good": good[:ELPV_TRAIN], "test/good": good[ELPV_TRAIN:], "test/defect": defective}
        tmp = root / f".elpv_{kind}.tmp"
        for folder, indices in split.items():
            (tmp / folder).mkdir(parents=True, exist_ok=True)
            for i in indices:
                cv2.imwrite(str(tmp / folder / f"cell_{i:04d}.png"), images[i])
        tmp.rename(root / f"elpv_{kind}")


def dataset_root(name: str, args: argparse.Namespace) -> Path:
    return args.data_root if name == "magnetic_tile" else args.elpv_root


# ---- jobs: one fresh process each -------------------------------------------------------------------------


def to_256(maps: np.ndarray) -> np.ndarray:
    """Maps at the masks' 256x256 (a 320 px model's maps are 320x320)."""
    import cv2

    if maps.shape[1:] == (SIZE, SIZE):
        return maps
    return np.stack([cv2.resize(m, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for m in maps])


def run_inspector(train: list[Path], test: list[Path], cfg: Config, variant: str) -> dict:
    set_up_fit_process(cfg.threads)
    from inspector.models.estimators import create_model

    model = create_model("patchcore", threads=cfg.threads, batch_size=cfg.batch_size, seed=cfg.seed)
    model.set_params(**VARIANTS[variant])
    start = time.perf_counter()
    model.fit(train, progress=False)
    fit = {"seconds": time.perf_counter() - start, "peak_rss_mib": peak_rss_mib(), **model.fit_info_}

    def score_one(image: np.ndarray) -> tuple[float, np.ndarray, None]:
        result = model.score([image])
        return float(result.scores[0]), result.maps[0], None

    scored = time_scoring(score_one, train[: cfg.warmup], test)
    return {**scored, "maps": to_256(scored["maps"]), "fit": fit}


def run_mh_patchcore(train: list[Path], test: list[Path], cfg: Config) -> dict:
    """anomalib's MH-PatchCore: its three fitting passes as its Lightning module drives them, then its forward."""
    import torch

    limit_threads(cfg.threads)
    from anomalib.models.image.mh_patchcore.torch_model import MHPatchcoreModel

    from inspector.data import read_image

    to_input = anomalib_input(SIZE)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    model = MHPatchcoreModel(backbone=BACKBONE, layers=ANOMALIB_LAYERS, pre_trained=False, num_neighbors=9)
    load_offline_weights(model.feature_extractor, BACKBONE, INSPECTOR_LAYERS)
    model.train()
    passes = {
        model.pca: lambda e: e,
        model.covariance: lambda e: model.pca(e),
        model.memory_bank: lambda e: model.covariance(model.pca(e)),
    }
    with torch.no_grad():
        for component, prepare in passes.items():
            for i in range(0, len(train), cfg.batch_size):
                component.update(prepare(model(to_input([read_image(p) for p in train[i : i + cfg.batch_size]]))))
            component.finalize()
    model.eval()
    fit = {
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": peak_rss_mib(),
        "bank_size": len(model.memory_bank.bank),
        "dims": int(model.memory_bank.bank.shape[1]),
    }

    def score_one(image: np.ndarray) -> tuple[float, np.ndarray, None]:
        with torch.inference_mode():
            out = model(to_input([image]))
        return float(out.pred_score[0]), out.anomaly_map[0, 0].numpy(), None

    return {**time_scoring(score_one, train[: cfg.warmup], test), "fit": fit}


def run_job(
    dataset: str, tool: str, root: str, cfg: Config, anomalib_site: str | None, limit: int | None = None
) -> dict:
    """One (data set, tool) pair in this fresh process: fit, score, evaluate."""
    if anomalib_site:
        sys.path.append(anomalib_site)
    has_masks = dataset == "magnetic_tile"
    train, test = list_dataset(Path(root), dataset, limit, limit, require_masks=has_masks)
    labels = np.array([s.is_defect for s in test], dtype=int)
    paths = [s.path for s in test]
    load_before = load_average()
    if tool == "anomalib":
        result = run_anomalib_patchcore(train, paths, cfg)
    elif tool == "mh-patchcore":
        result = run_mh_patchcore(train, paths, cfg)
    else:
        result = run_inspector(train, paths, cfg, tool.removeprefix("inspector: "))
    if has_masks:
        metrics = evaluate_maps(result, labels, load_masks(test, (SIZE, SIZE)))
    else:
        from inspector.evaluation.metrics import auroc

        metrics = {"image_auroc": auroc(labels, result["scores"])}
    fit = {k: v for k, v in result["fit"].items() if isinstance(v, (int, float, str))}
    return {
        "dataset": dataset,
        "tool": tool,
        "n_train": len(train),
        "n_good": int((labels == 0).sum()),
        "n_defective": int(labels.sum()),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "median_ms": float(np.median(result["ms"])),
        "fit": fit,
        "load_average": {"before": load_before, "after": load_average()},
    }


# ---- parent: schedule and report ----------------------------------------------------------------------


def print_report(records: list[dict]) -> None:
    for dataset in DATASETS:
        rows = [r for r in records if r["dataset"] == dataset]
        if not rows:
            continue
        first = rows[0]
        print(f"\n{dataset}: {first['n_train']} train, {first['n_good']} good / {first['n_defective']} defective")
        base = next((r["metrics"]["image_auroc"] for r in rows if r["tool"] == "anomalib"), None)
        table = []
        for r in rows:
            m = r["metrics"]
            delta = "" if base is None or r["tool"] == "anomalib" else f"{m['image_auroc'] - base:+.4f}"
            pixel = [f"{m['pixel_auroc']:.4f}", f"{m['aupro']:.4f}"] if "pixel_auroc" in m else ["", ""]
            table.append(
                [
                    r["tool"],
                    f"{m['image_auroc']:.4f}",
                    delta,
                    *pixel,
                    f"{r['fit']['seconds']:.0f}",
                    f"{r['median_ms']:.1f}",
                ]
            )
        headers = ["tool", "image AUROC", "vs anomalib", "pixel AUROC", "AUPRO@0.3", "fit s", "median ms/img"]
        print(markdown_table(headers, table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="folder holding magnetic_tile")
    parser.add_argument("--elpv-root", type=Path, default=Path("/tmp/inspector-elpv"), help="ELPV as MVTec folders")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--tools", nargs="*", choices=ANOMALIB_TOOLS, default=list(ANOMALIB_TOOLS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--anomalib-site", help="a folder anomalib 2.7.0 was pip-installed into with --target")
    parser.add_argument("--workers", type=int, default=2, help="jobs at a time")
    parser.add_argument("--threads", type=int, default=1, help="threads per job")
    parser.add_argument("--jsonl", type=Path, default=Path("/tmp/bench_accuracy.jsonl"), help="append results here")
    parser.add_argument("--limit", type=int, help="a quick trial: N training and N test images per data set")
    parser.add_argument("--skip", nargs="+", default=[], metavar="DATASET:TOOL", help="leave these jobs out")
    parser.add_argument("--report", type=Path, help="only print the tables of an earlier run's --jsonl")
    args = parser.parse_args(argv)
    if args.report:
        lines = [json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]
        print_report([record for record in lines if "dataset" in record])
        return 0

    if any(d.startswith("elpv") for d in args.datasets):
        write_elpv(args.elpv_root)
    cfg = Config(threads=args.threads)
    limit_threads(cfg.threads)  # inherited by the children
    jobs = [(d, t) for d in args.datasets for t in args.tools]
    jobs += [(d, f"inspector: {v}") for d in args.datasets for v in args.variants]
    # Resume: a job already in --jsonl is not run again (a long run cut short goes on where it stopped).
    done = set()
    if args.jsonl.is_file():
        done = {(r["dataset"], r["tool"]) for r in map(json.loads, args.jsonl.read_text().splitlines()) if "tool" in r}
    skipped = {tuple(item.split(":", 1)) for item in args.skip}
    jobs = [job for job in jobs if job not in done and job not in skipped]
    size = {"magnetic_tile": 3.0, "elpv_mono": 1.0, "elpv_poly": 1.0}
    jobs.sort(key=lambda job: -EXPECTED_MINUTES.get(job[1], 1.0) * size[job[0]])
    with args.jsonl.open("a") as out:
        out.write(json.dumps({"machine": machine_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    records = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context, max_tasks_per_child=1) as pool:
        pending = {
            pool.submit(run_job, d, t, str(dataset_root(d, args)), cfg, args.anomalib_site, args.limit): (d, t)
            for d, t in jobs
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                dataset, tool = pending.pop(future)
                try:
                    record = future.result()
                except Exception as exc:  # one failed job must not lose the others
                    print(f"[{dataset} / {tool}] failed: {exc!r}", file=sys.stderr, flush=True)
                    continue
                records.append(record)
                with args.jsonl.open("a") as out:
                    out.write(json.dumps(record) + "\n")
                print(f"[{dataset} / {tool}] {record['metrics']} fit {record['fit']['seconds']:.0f} s", flush=True)
    print_report(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
