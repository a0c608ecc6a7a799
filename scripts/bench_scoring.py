"""PatchCore scoring cost against accuracy: the knobs that cut the search's arithmetic, measured on one category.

Fits inspector's default PatchCore once (lite0, 256 px, 1% coreset, 2 threads) and caches it under `--cache`
together with the training patches' mean and covariance (one more pass of the fitted network over the training
images), so reruns skip the fit unless a parameter or the fitting code (inspector's features, components and
models sources) changed. Then, in one scoring process, for every test image at batch 1:

* preprocess (`Preprocessing`, the decoded image to the network's input) and features (the model's onnxruntime
  network) are run once and timed;
* every variant's search (its FAISS index on its projection of the 152-d patch rows; the projection itself is
  not timed here, since a fitted model's network ends in it: the end-to-end pass times it inside features) and
  postprocess (upsample, blur, image score = map peak) are run on those rows and timed, the variants in a
  rotated order per image so that load from other jobs falls on all of them alike.

A variant's ms per image is the median preprocess + features + its own median search + postprocess. Variants are
built from the cached fit: PCA / whitening (`inspector.components.projection`, from the training patches'
statistics, applied to the bank and the queries), a capped bank (the first k entries of the greedy order, which
is exactly the greedy coreset of size k), IVF nprobe, HNSW efSearch, FAISS's fp16 scalar quantiser, and a smaller
random `embed_dim` (the model's random projection applied to the bank; a real fit would pick its coreset after
projecting). Image and pixel AUROC (no AUPRO) come from each variant's maps at 256x256, computed as
`_bench_common.evaluate_maps` does.

`--end-to-end` then fits (cached too) the estimator configurations named by `--candidates` and times each one's
`scorer.score([image])` (the line's own path) interleaved with the default's, A, B, A, B, plus anomalib 2.7.0's
`PatchcoreModel` forward at batch 1 with its memory bank set to the default's bank (timing only: its accuracy
needs its own 46-minute fit, see bench_patchcore.py), in its own process, between two inspector passes.

`--float32-index` adds, end to end, the default model with its HNSW graph holding the bank in float32 (a copy of
the fitted model with only index.faiss rebuilt), as it did before a float16 bank was stored in float16.

`--preprocess` times decoding and resizing 800x800 JPEGs made from the test images, the uint8 resize as it was
against `Preprocessing` now, and checks that both give the same batch.

    PYTHONPATH=src python scripts/bench_scoring.py --json /tmp/bench_scoring.json
    PYTHONPATH=src python scripts/bench_scoring.py --limit-test 120          # timings only: fewer images
    PYTHONPATH=src python scripts/bench_scoring.py --skip-sweep --preprocess --end-to-end \
        --candidates pca64-ivf16 hnsw-ef16 --anomalib-site /tmp/anomalib-site

anomalib 2.7.0 is not a project dependency: `pip install --target /tmp/anomalib-site --no-deps anomalib==2.7.0`
and the few modules its import asks for.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _bench_common import (
    DEFAULT_DATA_ROOT,
    anomalib_input,
    limit_threads,
    list_dataset,
    load_average,
    load_masks,
    load_offline_weights,
    log_termination,
    machine_info,
    markdown_table,
    run_isolated,
    set_up_fit_process,
    source_digest,
    write_json,
)

BACKBONE = "tf_efficientnet_lite0"
LAYERS = (2, 3)
IMAGE_SIZE = 256
DEFAULT_CACHE = Path("/tmp/inspector-bench-scoring")
CACHE_SOURCE_FILE = "fitted_by.txt"
# Estimator configurations for --end-to-end, by name: parameters on top of the default.
CANDIDATES: dict[str, dict[str, Any]] = {
    "default": {},
    "pca64": {"projection": "pca", "projection_dim": 64},
    "pca64-ivf16": {"projection": "pca", "projection_dim": 64, "index": "ivf", "nprobe": 16},
    "hnsw-ef16": {"index": "hnsw", "ef_search": 16},
    "ivf16": {"index": "ivf", "nprobe": 16},
    "pca64-ivf12": {"projection": "pca", "projection_dim": 64, "index": "ivf", "nprobe": 12},
    "pca64-hnsw-ef16": {"projection": "pca", "projection_dim": 64, "index": "hnsw", "ef_search": 16},
    "pca64-hnsw-ef8": {"projection": "pca", "projection_dim": 64, "index": "hnsw", "ef_search": 8},
    "hnsw-ef8": {"index": "hnsw", "ef_search": 8},
    "bare-peak": {"density_neighbors": None, "map_top_fraction": 0.0},
    "hnsw-m16": {"hnsw_m": 16},
    "hnsw-m24": {"hnsw_m": 24},
}


@dataclass(frozen=True)
class Variant:
    """One way to search: projection (None | "pca" | "whiten" | "random"), its width, bank cap, index."""

    name: str
    projection: str | None = None
    dim: int | None = None
    cap: int | None = None
    index: str = "flat"  # flat | ivf | hnsw | fp16
    knob: int | None = None  # nprobe for ivf, efSearch for hnsw


def sweep_variants() -> list[Variant]:
    v = [Variant("flat 152 (today)")]
    v += [Variant(f"pca {d}", "pca", d) for d in (96, 64, 48, 32)]
    v += [Variant(f"whiten {d}", "whiten", d) for d in (152, 96, 64, 48)]
    v += [Variant(f"random embed_dim {d}", "random", d) for d in (96, 64)]
    v += [Variant(f"bank {k}", cap=k) for k in (4000, 2000, 1000)]
    v += [Variant(f"ivf nprobe {p}", index="ivf", knob=p) for p in (4, 8, 16, 32)]
    v += [Variant(f"hnsw ef {e}", index="hnsw", knob=e) for e in (16, 32, 64)]
    v += [Variant("fp16 sq", index="fp16")]
    v += [Variant(f"pca 64 + bank {k}", "pca", 64, cap=k) for k in (4000, 2000)]
    v += [Variant("pca 64 + fp16 sq", "pca", 64, index="fp16")]
    v += [Variant(f"pca 64 + hnsw ef {e}", "pca", 64, index="hnsw", knob=e) for e in (32, 64)]
    v += [Variant(f"pca 64 + ivf nprobe {p}", "pca", 64, index="ivf", knob=p) for p in (8, 16)]
    return v


# ---- the cached fit -------------------------------------------------------------------------------------------


def model_dir(cache: Path, category: str, name: str) -> Path:
    return cache / f"{category}-lite0-{IMAGE_SIZE}-{name}"


def fit_cached(train: list[Path], out: Path, params: dict[str, Any], threads: int, stats: bool) -> dict:
    """Fit (in this fresh process) and save a PatchCore with `params` on top of the default, unless `out` already
    holds one with the same parameters; with `stats`, also save the training patches' mean and covariance."""
    import cv2  # noqa: F401
    import torch  # noqa: F401

    set_up_fit_process(threads)
    from inspector.models.estimators import create_model

    wanted = {"backbone": BACKBONE, "image_size": IMAGE_SIZE, "coreset_ratio": 0.01, "seed": 0, **params}
    model = create_model("patchcore", layers=LAYERS, threads=threads, batch_size=8, **wanted)
    manifest, fitted_by = out / "manifest.json", out / CACHE_SOURCE_FILE
    code = fitting_code_digest()
    if manifest.is_file() and fitted_by.is_file():
        # Every parameter must match, defaults included, and so must the fitting code: a model cached before a
        # default or the index's format changed is fitted again.
        saved = json.loads(manifest.read_text())
        params_now = json.loads(json.dumps(model.get_params(), default=list))
        same = saved["params"] == params_now and saved["fit"]["n_images"] == len(train)
        if same and fitted_by.read_text() == code and (not stats or (out / "patch_stats.npz").is_file()):
            return {"cached": True, **saved["fit"]}
    model.fit(train, progress=False)
    model.save(out, {"train_dir": str(Path(train[0]).parent), "n_images": len(train)})
    fitted_by.write_text(code)
    if stats:
        save_patch_statistics(model, train, out / "patch_stats.npz")
    return {"cached": False, **model.fit_info_}


def fitting_code_digest() -> str:
    """Which fitting code a cached model came from: the sources of the packages that build its files."""
    return " ".join(source_digest(f"inspector.{name}") for name in ("features", "components", "models"))


def derive_float32_index(source: Path, out: Path) -> Path:
    """A copy of the fitted model in `source` whose HNSW graph holds the bank in float32, as every model did before
    float16 banks were stored in float16: the same bank, graph degree and search settings, for a same-run timing."""
    import faiss

    from inspector.components.knn import NearestNeighbourIndex
    from inspector.models.persistence import read_model_dir, write_model_dir

    manifest, files = read_model_dir(source)
    saved = NearestNeighbourIndex("hnsw").from_bytes(files["index.faiss"])
    with np.load(io.BytesIO(files["memory_bank.npz"])) as state:
        bank = np.ascontiguousarray(state["memory_bank"], dtype=np.float32)
    index = faiss.IndexHNSWFlat(bank.shape[1], saved.hnsw_m)
    index.add(bank)
    files["index.faiss"] = faiss.serialize_index(index).tobytes()
    assert NearestNeighbourIndex("hnsw").from_bytes(files["index.faiss"]).stored_dtype == "float32"
    write_model_dir(out, manifest, files)
    return out


def save_patch_statistics(model: Any, train: list[Path], path: Path) -> None:
    """Mean and covariance of every training patch, through the fitted network (what a projection fit uses)."""
    from inspector.components.projection import PatchStatistics
    from inspector.models.scoring import patch_rows

    statistics = PatchStatistics()
    for batch in model._batches(train, False, "stats"):
        statistics.add(patch_rows(model.scorer_.runner(batch)[0]))
    np.savez(path, mean=statistics.mean, covariance=statistics.covariance, count=statistics.count)


# ---- the sweep ------------------------------------------------------------------------------------------------


@dataclass
class Built:
    variant: Variant
    project: Any  # rows -> rows
    index: Any  # .search(queries, 1) -> (distances, ids), Euclidean
    bank_size: int
    width: int
    search_ms: list[float] = field(default_factory=list)
    post_ms: list[float] = field(default_factory=list)
    patch_maps: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


class Fp16Index:
    """FAISS's fp16 scalar quantiser over the bank (a flat search with half-width storage), Euclidean out."""

    def __init__(self, bank: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexScalarQuantizer(bank.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
        self.index.train(bank)
        self.index.add(bank)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        sq, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.sqrt(np.maximum(sq, 0.0)), idx


def build_variant(variant: Variant, bank: np.ndarray, stats: Any, seed: int = 0) -> Built:
    from inspector.components.knn import NearestNeighbourIndex
    from inspector.components.projection import PatchStatistics, Projection, fit_projection

    def identity(rows: np.ndarray) -> np.ndarray:
        return rows

    project: Any = identity
    if variant.projection == "random":
        import torch

        dim = variant.dim or bank.shape[1]
        generator = torch.Generator().manual_seed(seed)  # as PatchEmbedding draws its conv weight
        weight = (torch.randn(dim, bank.shape[1], generator=generator) / dim**0.5).numpy()
        project = Projection(np.ascontiguousarray(weight.T), np.zeros(dim, np.float32))
    elif variant.projection is not None:
        statistics = PatchStatistics()
        statistics.count, statistics._shift = int(stats["count"]), stats["mean"].astype(np.float32)
        statistics._sum = np.zeros(len(stats["mean"]))
        statistics._outer = stats["covariance"].astype(np.float64)
        project = fit_projection(statistics, variant.projection, variant.dim)  # type: ignore[arg-type]
    kept = bank[: variant.cap] if variant.cap else bank
    projected = np.ascontiguousarray(project(kept), dtype=np.float32)
    index: Any
    if variant.index == "fp16":
        index = Fp16Index(projected)
    elif variant.index == "ivf":
        index = NearestNeighbourIndex("ivf", nprobe=variant.knob or 8, use_gpu=False).build(projected)
    elif variant.index == "hnsw":
        index = NearestNeighbourIndex("hnsw", ef_search=variant.knob or 64, use_gpu=False).build(projected)
    else:
        index = NearestNeighbourIndex("flat", use_gpu=False).build(projected)
    return Built(variant, project, index, len(kept), projected.shape[1])


def run_sweep(model_path: Path, test: list[Path], variants: list[Variant], threads: int, warmup: int) -> dict:
    """Time and score every variant on every test image (runs in its own process)."""
    import cv2

    limit_threads(threads)
    cv2.setNumThreads(threads)
    from inspector.components.knn import set_search_threads
    from inspector.components.postprocess import smooth_maps
    from inspector.data import read_image
    from inspector.models.scoring import load_scorer, patch_rows

    set_search_threads(threads)
    scorer = load_scorer(model_path, threads=threads)
    bank = scorer.memory_bank  # type: ignore[attr-defined]
    with np.load(model_path / "patch_stats.npz") as stats:
        built = [build_variant(v, bank, dict(stats)) for v in variants]
    images = [read_image(p) for p in test]
    size, sigma = scorer.preprocessing.input_size, scorer.blur_sigma
    pre_ms, feat_ms = [], []
    loads = [load_average()]
    for i, image in enumerate([*images[:warmup], *images]):
        t0 = time.perf_counter()
        batch = scorer.preprocessing([image])
        t1 = time.perf_counter()
        embedding = scorer.runner(batch)[0]
        t2 = time.perf_counter()
        rows = patch_rows(embedding)
        _, _, h, w = embedding.shape
        timed = i >= warmup
        if timed:
            pre_ms.append((t1 - t0) * 1e3)
            feat_ms.append((t2 - t1) * 1e3)
        shift = i % len(built)
        for b in built[shift:] + built[:shift]:
            queries = b.project(rows)  # the fitted model's network ends in this: timed with its features
            s0 = time.perf_counter()
            distances, _ = b.index.search(queries, 1)
            patch_map = distances[:, 0].reshape(1, h, w)
            s1 = time.perf_counter()
            amap = smooth_maps(patch_map, size, sigma)
            score = float(amap.max())
            s2 = time.perf_counter()
            if timed:
                b.search_ms.append((s1 - s0) * 1e3)
                b.post_ms.append((s2 - s1) * 1e3)
                b.patch_maps.append(patch_map[0].astype(np.float32))
                b.scores.append(score)
        if timed and (i - warmup) % 100 == 0:
            loads.append(load_average())
    loads.append(load_average())
    return {
        "preprocess_ms": float(np.median(pre_ms)),
        "features_ms": float(np.median(feat_ms)),
        "loads": loads,
        "size": size,
        "sigma": sigma,
        "variants": [
            {
                "name": b.variant.name,
                "variant": b.variant.__dict__,
                "bank_size": b.bank_size,
                "width": b.width,
                "search_ms": float(np.median(b.search_ms)),
                "postprocess_ms": float(np.median(b.post_ms)),
                "scores": np.array(b.scores),
                "patch_maps": np.stack(b.patch_maps),
            }
            for b in built
        ],
    }


def metrics(maps: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    from inspector.evaluation.metrics import auroc, pixel_auroc

    return {"image_auroc": auroc(labels, scores), "pixel_auroc": pixel_auroc(masks, maps)}


# ---- end to end: the line's own scoring path, and anomalib's ----------------------------------------------------


def run_end_to_end(paths: dict[str, Path], test: list[Path], threads: int, warmup: int, rounds: int) -> dict:
    """`scorer.score([image])` per model, interleaved per image (runs in its own process)."""
    import cv2

    limit_threads(threads)
    cv2.setNumThreads(threads)
    from inspector.components.knn import set_search_threads
    from inspector.data import read_image
    from inspector.models.scoring import load_scorer

    set_search_threads(threads)
    scorers = {name: load_scorer(path, threads=threads) for name, path in paths.items()}
    images = [read_image(p) for p in test]
    names = list(scorers)
    out: dict[str, dict[str, Any]] = {n: {"ms": [], "stages": [], "scores": [], "maps": []} for n in names}
    load_before = load_average()
    for r in range(rounds):
        for i, image in enumerate([*images[:warmup], *images]):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                result = scorers[name].score([image])
                elapsed = (time.perf_counter() - t0) * 1e3
                if i >= warmup:
                    out[name]["ms"].append(elapsed)
                    out[name]["stages"].append(result.timings_ms)
                    if r == 0:
                        out[name]["scores"].append(float(result.scores[0]))
                        out[name]["maps"].append(result.maps[0].astype(np.float16))
    summary = {}
    for name in names:
        stages = out[name]["stages"]
        summary[name] = {
            "ms_median": float(np.median(out[name]["ms"])),
            "stages_ms": {k: float(np.median([s[k] for s in stages])) for k in stages[0]},
            "scores": np.array(out[name]["scores"]),
            "maps": np.stack(out[name]["maps"]),
            "n_timed": len(out[name]["ms"]),
        }
    return {"models": summary, "load_average": {"before": load_before, "after": load_average()}}


def run_anomalib_scoring(site: str, model_path: Path, test: list[Path], threads: int, warmup: int) -> dict:
    """anomalib's PatchcoreModel forward at batch 1 with inspector's bank as its memory bank (timing only)."""
    sys.path.insert(0, site)
    import cv2  # noqa: F401
    import torch

    limit_threads(threads)
    torch.set_num_threads(threads)
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from inspector.data import read_image
    from inspector.models.scoring import load_scorer

    bank = load_scorer(model_path, threads=1).memory_bank  # type: ignore[attr-defined]
    model = PatchcoreModel(layers=["blocks.2", "blocks.4"], backbone=BACKBONE, pre_trained=False, num_neighbors=9)
    load_offline_weights(model.feature_extractor, BACKBONE, LAYERS)
    model.memory_bank = torch.from_numpy(np.ascontiguousarray(bank))
    model.eval()
    to_input = anomalib_input(IMAGE_SIZE)
    images = [read_image(p) for p in test]
    ms = []
    load_before = load_average()
    for i, image in enumerate([*images[:warmup], *images]):
        t0 = time.perf_counter()
        x = to_input([image])
        with torch.inference_mode():
            out = model(x)
        float(out.pred_score[0])
        out.anomaly_map[0, 0].numpy()
        if i >= warmup:
            ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "ms_median": float(np.median(ms)),
        "n_timed": len(ms),
        "bank_size": len(model.memory_bank),
        "load_average": {"before": load_before, "after": load_average()},
    }


# ---- pre-processing: the resize, before and after -------------------------------------------------------------


def run_preprocess(test: list[Path], threads: int, size: int) -> dict:
    """Decode and resize `size`x`size` versions of the test images to the network's input, OpenCV's uint8 area resize
    (what Preprocessing did) against Preprocessing now, interleaved per image (runs in its own process)."""
    import cv2

    limit_threads(threads)
    cv2.setNumThreads(threads)
    from inspector.data import read_image
    from inspector.data.io import decode_image
    from inspector.features.preprocess import Preprocessing

    preprocessing = Preprocessing((IMAGE_SIZE, IMAGE_SIZE))

    def before(image: np.ndarray) -> np.ndarray:
        batch = np.empty((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        batch[0] = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
        return batch

    encoded = []
    for path in test:
        large = cv2.resize(read_image(path), (size, size), interpolation=cv2.INTER_LINEAR)
        encoded.append(cv2.imencode(".jpg", cv2.cvtColor(large, cv2.COLOR_RGB2BGR))[1])
    times: dict[str, list[float]] = {"decode": [], "resize before": [], "resize now": []}
    identical = True
    load_before = load_average()
    for i, data in enumerate(encoded):
        t0 = time.perf_counter()
        image = decode_image(data)
        times["decode"].append((time.perf_counter() - t0) * 1e3)
        order = ["resize before", "resize now"] if i % 2 else ["resize now", "resize before"]
        out = {}
        for name in order:
            t0 = time.perf_counter()
            out[name] = before(image) if name == "resize before" else preprocessing([image])
            times[name].append((time.perf_counter() - t0) * 1e3)
        identical = identical and bool(np.array_equal(out["resize before"], out["resize now"]))
    return {
        "input": f"{size}x{size} JPEG",
        "n": len(encoded),
        "ms_median": {k: float(np.median(v)) for k, v in times.items()},
        "identical": identical,
        "load_average": {"before": load_before, "after": load_average()},
    }


# ---- parent -----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where fitted models are kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--limit-test", type=int, default=None, help="use N test images (evenly spread)")
    parser.add_argument("--only", nargs="+", default=None, help="sweep only variants whose name contains one")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--preprocess", action="store_true", help="time the resize of large inputs, before and now")
    parser.add_argument("--preprocess-size", type=int, default=800)
    parser.add_argument("--end-to-end", action="store_true", help="also time fitted candidates end to end")
    parser.add_argument("--candidates", nargs="+", default=["pca64"], choices=[c for c in CANDIDATES if c != "default"])
    parser.add_argument(
        "--float32-index", action="store_true", help="end to end, also the default with its bank held in float32"
    )
    parser.add_argument("--rounds", type=int, default=1, help="end-to-end passes over the test images")
    parser.add_argument("--anomalib-site", default=None, help="a folder holding anomalib 2.7.0 (pip --target)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_termination()
    limit_threads(args.threads)
    from inspector.components.postprocess import smooth_maps

    train, test_samples = list_dataset(args.data_root, args.category, None, args.limit_test)
    test = [s.path for s in test_samples]
    labels = np.array([s.is_defect for s in test_samples])
    masks = load_masks(test_samples, (IMAGE_SIZE, IMAGE_SIZE))
    default = model_dir(args.cache, args.category, "default")
    report: dict[str, Any] = {"machine": machine_info(("onnxruntime", "faiss-cpu", "torch")), "loads": {}}
    print(f"{args.category}: {len(train)} train, {len(test)} test; {args.threads} threads", file=sys.stderr)
    report["fit"] = {"default": run_isolated(fit_cached, train, default, {}, args.threads, True)}
    print(f"[fit] default: {report['fit']['default']}", file=sys.stderr, flush=True)

    if args.preprocess:
        report["preprocess"] = run_isolated(run_preprocess, test, args.threads, args.preprocess_size)
        print(f"[preprocess] {report['preprocess']}", flush=True)

    if not args.skip_sweep:
        variants = sweep_variants()
        if args.only:
            variants = [v for v in variants if v.name == variants[0].name or any(o in v.name for o in args.only)]
        load_before = load_average()
        sweep = run_isolated(run_sweep, default, test, variants, args.threads, args.warmup)
        report["loads"]["sweep"] = {"before": load_before, "during": sweep["loads"], "after": load_average()}
        rows = []
        for v in sweep["variants"]:
            maps = smooth_maps(v.pop("patch_maps"), tuple(sweep["size"]), sweep["sigma"])
            v["metrics"] = metrics(maps, v["scores"], labels, masks)
            v["ms_per_image"] = sweep["preprocess_ms"] + sweep["features_ms"] + v["search_ms"] + v["postprocess_ms"]
            rows.append(
                [
                    v["name"],
                    v["bank_size"],
                    v["width"],
                    f"{v['ms_per_image']:.1f}",
                    f"{v['search_ms']:.2f}",
                    f"{v['postprocess_ms']:.2f}",
                    f"{v['metrics']['image_auroc']:.4f}",
                    f"{v['metrics']['pixel_auroc']:.4f}",
                ]
            )
        headers = ["variant", "bank", "dims", "ms/img", "ms: search", "ms: postprocess", "image AUROC", "pixel AUROC"]
        common = f"preprocess {sweep['preprocess_ms']:.2f} ms, features {sweep['features_ms']:.2f} ms"
        print(f"\n{common} (medians, shared by all variants)")
        print(markdown_table(headers, rows), flush=True)
        report["sweep"] = {k: v for k, v in sweep.items() if k != "variants"} | {"variants": sweep["variants"]}

    if args.end_to_end:
        paths = {"default": default}
        if args.float32_index:
            paths["float32-index"] = run_isolated(
                derive_float32_index, default, model_dir(args.cache, args.category, "float32-index")
            )
        for name in args.candidates:
            paths[name] = model_dir(args.cache, args.category, name)
            report["fit"][name] = run_isolated(fit_cached, train, paths[name], CANDIDATES[name], args.threads, False)
            print(f"[fit] {name}: {report['fit'][name]}", file=sys.stderr, flush=True)
        passes = [run_isolated(run_end_to_end, paths, test, args.threads, args.warmup, args.rounds)]
        if args.anomalib_site:
            report["anomalib"] = run_isolated(
                run_anomalib_scoring, args.anomalib_site, default, test, args.threads, args.warmup
            )
            passes.append(run_isolated(run_end_to_end, paths, test, args.threads, args.warmup, args.rounds))
        rows = []
        for name in paths:
            first = passes[0]["models"][name]
            measured = metrics(first["maps"].astype(np.float32), first["scores"], labels, masks)
            medians = [p["models"][name]["ms_median"] for p in passes]
            stages = first["stages_ms"]
            rows.append(
                [
                    name,
                    " / ".join(f"{m:.1f}" for m in medians),
                    *(f"{stages[k]:.2f}" for k in ("preprocess", "features", "search", "postprocess")),
                    f"{measured['image_auroc']:.4f}",
                    f"{measured['pixel_auroc']:.4f}",
                ]
            )
            for p in passes:
                p["models"][name].pop("maps")
            report.setdefault("end_to_end", {})[name] = {
                "metrics": measured,
                "ms_medians": medians,
                "stages_ms": stages,
            }
        if "anomalib" in report:
            a = report["anomalib"]
            rows.append([f"anomalib PatchcoreModel, bank {a['bank_size']}", f"{a['ms_median']:.1f}", *"----", "-", "-"])
        headers = [
            "model",
            "median ms/img (per pass)",
            "pre",
            "features",
            "search",
            "post",
            "image AUROC",
            "pixel AUROC",
        ]
        print("\n" + markdown_table(headers, rows), flush=True)
        report["end_to_end_passes"] = [{"load_average": p["load_average"]} for p in passes]
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
