"""PatchCore side by side: inspector's PatchCore vs anomalib 2.7.0's `PatchcoreModel`, same data, same backbone.

What it measures, per tool, on one MVTec-layout category (default: magnetic_tile):

* image AUROC, pixel AUROC and AUPRO (FPR limit 0.3), all computed here with `inspector.evaluation.metrics` on anomaly
  maps at 256x256 against ground-truth masks resized to 256x256 (nearest, > 127);
* median milliseconds per test image at batch 1: from the decoded RGB uint8 image (any size) to image score +
  256x256 anomaly map, resize and normalisation included, after a few warm-up images;
* fit wall seconds and the peak RSS of the process at the end of fit (getrusage ru_maxrss). Each tool fits and
  scores in its own freshly spawned process, so the memory numbers are per tool.

Common settings: backbone tf_efficientnet_lite0 with the offline ImageNet weights inspector ships with (stages
blocks.2 and blocks.4: 40 ch @ stride 8 and 112 ch @ stride 16), images resized to 256x256 with no crop (the
same `inspector.features.preprocess.Preprocessing` resize for both tools), 1% coreset, batch 8 for fitting,
2 threads (torch.set_num_threads, cv2.setNumThreads and OMP/MKL/OpenBLAS environment). All images are decoded
with `inspector.data.read_image`.

inspector: `create_model("patchcore", backbone=..., layers=(2, 3), image_size=256, coreset_ratio=0.01,
threads=2, batch_size=8)`, then `fit(train_paths)` and `score([image])` (its default runtime, onnxruntime);
`inspector-fp32` the same with the patches held in float32 (`coreset_precision="float32"`; the default is
float16). `inspector-spill` and `inspector-stream` take a coreset budget of 64 MiB, below the 237 MiB the float16
patches of all 762 images take, so the fit takes its fallback: the patches spilled to a temporary file (the
default) or reduced chunk by chunk. For inspector the fit's peak anonymous and file-backed resident memory are
sampled as well (ru_maxrss counts a mapped file's pages, which the kernel can drop), and a digest of the bank
says whether two fits picked the same one. The process is set up as `inspector fit` sets its own
(`set_up_fit_process`: threads and the allocator's mapping threshold).

anomalib (2.7.0, torch model only, no Lightning), the calls made:

1. `PatchcoreModel(layers=["blocks.2", "blocks.4"], backbone="tf_efficientnet_lite0", pre_trained=False,
   num_neighbors=9)`. 2.7.0's constructor has no coreset ratio; the ratio goes to `subsample_embedding`.
   `TimmFeatureExtractor` maps the names through timm's feature_info modules to out_indices [2, 3].
2. `model.feature_extractor.feature_extractor.load_state_dict(state, strict=True)`, where `state` is
   `inspector.features.backbones.load_backbone("tf_efficientnet_lite0", (2, 3))[0].state_dict()`.
3. Fit as the Lightning module's `training_step` + `fit()` do: `model.train()`, `model(batch)` per batch of 8
   (appends to `model.embedding_store`), then `model.subsample_embedding(0.01)` (vstack of the store into
   `memory_bank`, then `KCenterGreedy` with a `SparseRandomProjection(eps=0.9)`). The timed fit includes
   building the model and loading the weights, as inspector's `fit()` does.
4. Score: `model.eval()`, then under `torch.inference_mode()` `model(x)` returns an `InferenceBatch`; we use
   its `pred_score` (the paper's reweighted image score, num_neighbors=9) and `anomaly_map` (patch distances,
   nearest-upsampled to 256x256 and Gaussian-blurred with sigma 4 inside the torch model). Input `x` is the
   same float32 0..255 NCHW batch inspector's network gets, scaled as the weights expect: (x/255 - 0.5) / 0.5.

Run (the full run takes well over an hour on 2 cores, nearly all of it in anomalib's coreset selection):

    PYTHONPATH=src python scripts/bench_patchcore.py --json /tmp/bench_patchcore.json
    PYTHONPATH=src python scripts/bench_patchcore.py --limit-train 60 --limit-test 60   # quick trial
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _bench_common import (
    AUPRO_FPR_LIMIT,
    DEFAULT_DATA_ROOT,
    STAGE_COLUMNS,
    SUMMARY_COLUMNS,
    MemorySampler,
    anomalib_input,
    bank_sha256,
    cpu_seconds,
    current_rss_mib,
    evaluate_maps,
    forward_stage_ms,
    limit_threads,
    list_dataset,
    load_average,
    load_masks,
    load_offline_weights,
    log_termination,
    machine_info,
    markdown_table,
    package_version,
    peak_rss_mib,
    run_isolated,
    set_up_fit_process,
    source_digest,
    summarize_ms,
    time_scoring,
    write_json,
)

BACKBONE = "tf_efficientnet_lite0"
INSPECTOR_LAYERS = (2, 3)  # timm out_indices of ...
ANOMALIB_LAYERS = ("blocks.2", "blocks.4")  # ... these feature_info modules: 40 ch @ /8, 112 ch @ /16
TOOLS = ("inspector", "inspector-fp32", "inspector-spill", "inspector-stream", "anomalib")
# inspector's rows: estimator parameters on top of the common settings. The last two take a budget below the
# patches' 237 MiB (float16), to measure the two fallbacks past it against the one-shot pass in memory.
FALLBACK_BUDGET_MB = 64.0
INSPECTOR_PARAMS: dict[str, dict[str, Any]] = {
    "inspector": {},
    "inspector-fp32": {"coreset_precision": "float32"},
    "inspector-spill": {"coreset_budget_mb": FALLBACK_BUDGET_MB},
    "inspector-stream": {"coreset_budget_mb": FALLBACK_BUDGET_MB, "coreset_fallback": "stream"},
}


@dataclass(frozen=True)
class Config:
    image_size: int = 256
    coreset_ratio: float = 0.01
    num_neighbors: int = 9
    threads: int = 2
    batch_size: int = 8
    warmup: int = 5
    seed: int = 0


# ---- child processes: one per tool ----------------------------------------------------------------------


def run_inspector(train: list[Path], test: list[Path], cfg: Config, params: dict | None = None) -> dict:
    """Fit and score inspector's PatchCore (runs in its own process)."""
    import cv2  # noqa: F401  (imported so limit_threads can set its pool)
    import torch  # noqa: F401

    set_up_fit_process(cfg.threads)  # torch and FAISS; `threads=` below is onnxruntime's
    from inspector.models.estimators import create_model

    model = create_model(
        "patchcore",
        backbone=BACKBONE,
        layers=INSPECTOR_LAYERS,
        image_size=cfg.image_size,
        coreset_ratio=cfg.coreset_ratio,
        threads=cfg.threads,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        **(params or {}),
    )
    rss_before, cpu_before = current_rss_mib(), cpu_seconds()
    start = time.perf_counter()
    with MemorySampler() as memory:
        model.fit(train, progress=False)
    fit = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu_seconds() - cpu_before,
        "peak_rss_mib": peak_rss_mib(),
        "peak_anon_mib": memory.peak_anon_mib,
        "peak_file_mib": memory.peak_file_mib,
        "rss_before_fit_mib": rss_before,
        "features_seconds": model.fit_info_["features_seconds"],
        "coreset_seconds": model.fit_info_["coreset_seconds"],
        "coreset_spilled": model.fit_info_["coreset_spilled"],
        "coreset_exact": model.fit_info_["coreset_exact"],
        "bank_size": model.fit_info_["bank_size"],
        "bank_sha256": bank_sha256(model.memory_bank_),
        "runtime": model.scorer_.runtime,
    }

    def score_one(image: np.ndarray) -> tuple[float, np.ndarray, dict]:
        result = model.score([image])
        return float(result.scores[0]), result.maps[0], result.timings_ms

    return {**time_scoring(score_one, train[: cfg.warmup], test), "fit": fit}


def run_anomalib(train: list[Path], test: list[Path], cfg: Config) -> dict:
    """Fit and score anomalib's PatchcoreModel without Lightning (runs in its own process)."""
    import cv2  # noqa: F401
    import torch

    limit_threads(cfg.threads)
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from inspector.data import read_image

    to_input = anomalib_input(cfg.image_size)
    torch.manual_seed(cfg.seed)  # KCenterGreedy's random start
    np.random.seed(cfg.seed)  # SparseRandomProjection's sklearn sampling
    rss_before, cpu_before = current_rss_mib(), cpu_seconds()
    start = time.perf_counter()
    model = PatchcoreModel(
        layers=list(ANOMALIB_LAYERS), backbone=BACKBONE, pre_trained=False, num_neighbors=cfg.num_neighbors
    )
    weights = load_offline_weights(model.feature_extractor, BACKBONE, INSPECTOR_LAYERS)
    model.train()
    built = time.perf_counter()
    for i in range(0, len(train), cfg.batch_size):
        model(to_input([read_image(p) for p in train[i : i + cfg.batch_size]]))
    n_patches = sum(len(e) for e in model.embedding_store)
    embedded = time.perf_counter()
    model.subsample_embedding(cfg.coreset_ratio)
    end = time.perf_counter()
    model.eval()
    fit = {
        "seconds": end - start,
        "cpu_seconds": cpu_seconds() - cpu_before,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_fit_mib": rss_before,
        "build_seconds": built - start,
        "features_seconds": embedded - built,
        "coreset_seconds": end - embedded,
        "bank_size": len(model.memory_bank),
        "patches_seen": n_patches,
        "weights_source": weights,
        "weights_module": "PatchcoreModel.feature_extractor.feature_extractor",
    }

    def score_one(image: np.ndarray) -> tuple[float, np.ndarray, None]:
        with torch.inference_mode():
            out = model(to_input([image]))
        return float(out.pred_score[0]), out.anomaly_map[0, 0].numpy(), None

    scored = time_scoring(score_one, train[: cfg.warmup], test)
    # preprocess: until the backbone starts; features: the timm backbone; search: pooling, embedding, nearest
    # neighbours and the reweighted image score; postprocess: upsampling + blur of the map, and the rest.
    scored["stages_ms"] = forward_stage_ms(
        score_one, [read_image(p) for p in test[:30]], model.feature_extractor, model.anomaly_map_generator
    )
    return {**scored, "fit": fit}


# ---- parent: evaluation and report ----------------------------------------------------------------------


def tool_label(tool: str, result: dict) -> str:
    if tool in INSPECTOR_PARAMS:
        settings = "".join(f", {k}={v}" for k, v in INSPECTOR_PARAMS[tool].items())
        return f"inspector {package_version('inspector') or 'src'} ({result['fit']['runtime']}{settings})"
    return f"anomalib {package_version('anomalib')} PatchcoreModel (torch)"


DETAIL_COLUMNS = {
    "bank size": lambda r: f"{r['fit']['bank_size']}",
    "fit: features s": lambda r: f"{r['fit']['features_seconds']:.1f}",
    "fit: coreset s": lambda r: f"{r['fit']['coreset_seconds']:.1f}",
    "fit CPU s": lambda r: f"{r['fit']['cpu_seconds']:.1f}",
    "RSS before fit MiB": lambda r: f"{r['fit']['rss_before_fit_mib']:.0f}",
    "peak anon / file MiB (fit)": lambda r: (
        f"{r['fit']['peak_anon_mib']:.0f} / {r['fit']['peak_file_mib']:.0f}" if "peak_anon_mib" in r["fit"] else ""
    ),
    "bank": lambda r: r["fit"].get("bank_sha256", "")[:12],
    "CPU ms/img": lambda r: f"{r['cpu_ms_summary']['median']:.1f}",
    **STAGE_COLUMNS,
}


def print_report(results: dict[str, dict]) -> None:
    """The summary table (one row per tool), then where the time and memory go."""
    summary = [[tool_label(tool, r), *(cell(r) for cell in SUMMARY_COLUMNS.values())] for tool, r in results.items()]
    print(markdown_table(["tool", *SUMMARY_COLUMNS], summary), end="\n\n")
    detail = [[tool, *(cell(r) for cell in DETAIL_COLUMNS.values())] for tool, r in results.items()]
    print(markdown_table(["tool", *DETAIL_COLUMNS], detail))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="folder holding the category")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--limit-train", type=int, default=None, help="use N training images (evenly spread)")
    parser.add_argument("--limit-test", type=int, default=None, help="use N test images (evenly spread)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--threads", type=int, default=Config.threads)
    parser.add_argument("--warmup", type=int, default=Config.warmup, help="untimed warm-up images per tool")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write all numbers here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_termination()
    cfg = Config(threads=args.threads, warmup=args.warmup)
    limit_threads(cfg.threads)  # environment inherited by the spawned children
    source_at_start = source_digest("inspector")
    train, test = list_dataset(args.data_root, args.category, args.limit_train, args.limit_test)
    labels = np.array([s.is_defect for s in test])
    masks = load_masks(test, (cfg.image_size, cfg.image_size))
    test_paths = [s.path for s in test]
    print(
        f"{args.category}: {len(train)} train, {len(test)} test ({labels.sum()} defective); {cfg.threads} threads",
        file=sys.stderr,
    )

    results: dict[str, dict] = {}
    for tool in args.tools:
        print(f"[{tool}] fitting and scoring in a fresh process ...", file=sys.stderr, flush=True)
        load_before = load_average()
        if tool in INSPECTOR_PARAMS:
            result = run_isolated(run_inspector, train, test_paths, cfg, INSPECTOR_PARAMS[tool])
        else:
            result = run_isolated(run_anomalib, train, test_paths, cfg)
        result["load_average"] = {"before": load_before, "after": load_average()}
        result["metrics"] = evaluate_maps(result, labels, masks)
        result["ms_summary"] = summarize_ms(result["ms"])
        result["cpu_ms_summary"] = summarize_ms(result["cpu_ms"])
        results[tool] = result
        print(f"[{tool}] fit {result['fit']['seconds']:.1f} s, {result['metrics']}", file=sys.stderr, flush=True)

    print_report(results)
    if args.json:
        config = {
            **asdict(cfg),
            "backbone": BACKBONE,
            "inspector_layers": INSPECTOR_LAYERS,
            "anomalib_layers": ANOMALIB_LAYERS,
            "aupro_fpr_limit": AUPRO_FPR_LIMIT,
        }
        dataset = {
            "root": args.data_root,
            "category": args.category,
            "n_train": len(train),
            "n_test": len(test),
            "n_defective": int(labels.sum()),
            "test_images": [str(s.path.relative_to(args.data_root)) for s in test],
            "labels": labels.astype(int),
        }
        per_tool = {tool: {k: v for k, v in r.items() if k != "maps"} for tool, r in results.items()}
        data = {
            "benchmark": "patchcore",
            "config": config,
            "machine": machine_info(),
            "dataset": dataset,
            "inspector_source_sha256": source_at_start,
            "results": per_tool,
        }
        print(f"wrote {write_json(args.json, data)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
