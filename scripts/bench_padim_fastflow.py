"""PaDiM and FastFlow side by side: inspector's models vs anomalib 2.7.0's `PadimModel` and `FastflowModel`.

What it measures, per tool and model, on one MVTec-layout category (default: magnetic_tile):

* image AUROC, pixel AUROC and AUPRO (FPR limit 0.3), all computed here with `inspector.evaluation.metrics` on anomaly
  maps at 256x256 against ground-truth masks resized to 256x256 (nearest, > 127);
* median milliseconds per test image at batch 1: from the decoded RGB uint8 image (any size) to image score +
  256x256 anomaly map, resize and normalisation included, after a few warm-up images;
* fit wall seconds and the peak RSS of the process at the end of fit (getrusage ru_maxrss). Each tool fits and
  scores each model in its own freshly spawned process, so the memory numbers are per tool and model.

Common settings: backbone tf_efficientnet_lite0 with the offline ImageNet weights inspector ships with (stages
blocks.2 and blocks.4: 40 ch @ stride 8 and 112 ch @ stride 16), images resized to 256x256 with no crop (the
same `inspector.features.preprocess.Preprocessing` resize for both tools), batch 8 for fitting, 2 threads
(torch.set_num_threads, cv2.setNumThreads and OMP/MKL/OpenBLAS environment), seed 0. All images are decoded
with `inspector.data.read_image`. anomalib's input is the float32 0..255 NCHW batch inspector's network gets,
scaled as the weights expect: (x/255 - 0.5) / 0.5.

inspector: `create_model("padim", backbone=..., layers=(2, 3), image_size=256, threads=2, batch_size=8,
n_features=100)` and `create_model("fastflow", ..., epochs=E, patience=E)` (patience=E switches its early
stopping off, so both tools train exactly E epochs), then `fit(train_paths)` and `score([image])` (default
runtime, onnxruntime).

anomalib PaDiM (torch model only, no Lightning), as `Padim.training_step` + `Padim.fit` do:

1. `torch.manual_seed(0)`, then `PadimModel(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"],
   pre_trained=False, n_features=100)` (n_features must be given: 2.7.0 has defaults only for resnet18 and
   wide_resnet50_2; its random channel subset comes from torch's global RNG);
2. the offline weights into `model.feature_extractor.feature_extractor` (strict `load_state_dict`);
3. `model.train()`, `model(batch)` per batch of 8 (appends each batch's embeddings to `model.memory_bank`),
   then `model.fit()`: vstack of all embeddings, per-position covariance + 0.01 I, `torch.linalg.inv`;
4. score: `model.eval()`, `model(x)` under `torch.inference_mode()`; `pred_score` is the map's max and
   `anomaly_map` the Mahalanobis distances, bilinear-upsampled to 256x256 and Gaussian-blurred (sigma 4).

anomalib FastFlow: 2.7.0's `FastflowModel.__init__` accepts only resnet18, wide_resnet50_2, cait_m48_448 and
deit_base_distilled_patch16_384 (anything else raises ValueError). We therefore subclass it and replace only
`__init__` by the body of its CNN (resnet) branch with the backbone's out_indices [2, 3] instead of resnet's
[1, 2, 3]: `timm.create_model(backbone, pretrained=False, features_only=True, out_indices=[2, 3])`, frozen;
one trainable `nn.LayerNorm([C, 256/s, 256/s])` per stage; one `create_fast_flow_block(...)` per stage
(flow_steps=8, conv3x3_only=False, hidden_ratio=1.0, clamp 2.0); `AnomalyMapGenerator(input_size=(256, 256))`.
`forward`, `_get_cnn_features`, the flow blocks, the loss and the anomaly map are anomalib's own code. Then:

1. `torch.manual_seed(0)`, build the model, offline weights into `model.feature_extractor` (strict);
2. train as Lightning would with `Fastflow.configure_optimizers` and `training_step`: `Adam(model.parameters(),
   lr=0.001, weight_decay=0.00001)`, `model.train()`, E epochs over the training images in a seeded shuffled
   order, batches of 8 decoded and preprocessed each epoch (a DataLoader with shuffle=True, num_workers=0),
   `loss = FastflowLoss()(*model(x))`, zero_grad, backward, step; no gradient clipping (its trainer args);
3. score: `model.eval()`, `model(x)` under `torch.inference_mode()`: `pred_score` is the max of
   `anomaly_map`, the negated per-position likelihood averaged over the stages at 256x256 (no blur).

Run (add --models padim or --models fastflow for one of them; --epochs sets FastFlow's epochs, default 10):

    PYTHONPATH=src python scripts/bench_padim_fastflow.py --json /tmp/bench_padim_fastflow.json
    PYTHONPATH=src python scripts/bench_padim_fastflow.py --limit-train 40 --limit-test 40 --epochs 1  # trial
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from _bench_common import (
    AUPRO_FPR_LIMIT,
    DEFAULT_DATA_ROOT,
    STAGE_COLUMNS,
    SUMMARY_COLUMNS,
    anomalib_input,
    cpu_seconds,
    current_rss_mib,
    evaluate_maps,
    forward_stage_ms,
    limit_threads,
    list_dataset,
    load_average,
    load_masks,
    load_offline_state,
    load_offline_weights,
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
FASTFLOW_LR, FASTFLOW_WEIGHT_DECAY = 0.001, 0.00001  # anomalib's Fastflow.configure_optimizers
MODELS = ("padim", "fastflow")
TOOLS = ("inspector", "anomalib")


@dataclass(frozen=True)
class Config:
    image_size: int = 256
    n_features: int = 100
    epochs: int = 10
    threads: int = 2
    batch_size: int = 8
    warmup: int = 5
    seed: int = 0


# ---- child processes: one per tool and model ------------------------------------------------------------


def run_inspector(kind: str, train: list[Path], test: list[Path], cfg: Config) -> dict:
    """Fit and score inspector's PaDiM or FastFlow (runs in its own process)."""
    import cv2  # noqa: F401  (imported so limit_threads can set its pool)
    import torch  # noqa: F401

    set_up_fit_process(cfg.threads)  # torch and FAISS; `threads=` below is onnxruntime's
    from inspector.models.estimators import create_model

    extra = {"n_features": cfg.n_features} if kind == "padim" else {"epochs": cfg.epochs, "patience": cfg.epochs}
    model = create_model(
        kind,
        backbone=BACKBONE,
        layers=INSPECTOR_LAYERS,
        image_size=cfg.image_size,
        threads=cfg.threads,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        **extra,
    )
    rss_before, cpu_before = current_rss_mib(), cpu_seconds()
    start = time.perf_counter()
    model.fit(train, progress=False)
    fit = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": cpu_seconds() - cpu_before,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_fit_mib": rss_before,
        "runtime": model.scorer_.runtime,
        "fit_info": model.fit_info_,
        "params": model.get_params(),
    }
    if kind == "fastflow":
        fit["loss_history"] = model.loss_history_

    def score_one(image: np.ndarray) -> tuple[float, np.ndarray, dict]:
        result = model.score([image])
        return float(result.scores[0]), result.maps[0], result.timings_ms

    return {**time_scoring(score_one, train[: cfg.warmup], test), "fit": fit}


def anomalib_scoring(model, to_input: Callable, train: list[Path], test: list[Path], cfg: Config) -> dict:
    """Time anomalib's torch model on the test images (batch 1), then split its time into stages."""
    import torch

    from inspector.data import read_image

    model.eval()

    def score_one(image: np.ndarray) -> tuple[float, np.ndarray, None]:
        with torch.inference_mode():
            out = model(to_input([image]))
        return float(out.pred_score.flatten()[0]), out.anomaly_map[0, 0].numpy(), None

    scored = time_scoring(score_one, train[: cfg.warmup], test)
    sample = [read_image(p) for p in test[:30]]
    scored["stages_ms"] = forward_stage_ms(score_one, sample, model.feature_extractor, model.anomaly_map_generator)
    return scored


def run_anomalib_padim(train: list[Path], test: list[Path], cfg: Config) -> dict:
    """Fit and score anomalib's PadimModel without Lightning (runs in its own process)."""
    import cv2  # noqa: F401
    import torch

    limit_threads(cfg.threads)
    from anomalib.models.image.padim.torch_model import PadimModel

    from inspector.data import read_image

    to_input = anomalib_input(cfg.image_size)
    torch.manual_seed(cfg.seed)  # PadimModel draws its channel subset from the global RNG
    rss_before, cpu_before = current_rss_mib(), cpu_seconds()
    start = time.perf_counter()
    model = PadimModel(backbone=BACKBONE, layers=list(ANOMALIB_LAYERS), pre_trained=False, n_features=cfg.n_features)
    weights = load_offline_weights(model.feature_extractor, BACKBONE, INSPECTOR_LAYERS)
    model.train()
    built = time.perf_counter()
    for i in range(0, len(train), cfg.batch_size):
        model(to_input([read_image(p) for p in train[i : i + cfg.batch_size]]))
    n_embeddings = sum(len(e) for e in model.memory_bank)
    embedded = time.perf_counter()
    model.fit()
    end = time.perf_counter()
    fit = {
        "seconds": end - start,
        "cpu_seconds": cpu_seconds() - cpu_before,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_fit_mib": rss_before,
        "build_seconds": built - start,
        "features_seconds": embedded - built,
        "gaussian_seconds": end - embedded,
        "embeddings_held": n_embeddings,
        "embedding_shape": list(model.gaussian.mean.shape),
        "n_features": model.n_features,
        "weights_source": weights,
        "weights_module": "PadimModel.feature_extractor.feature_extractor",
    }
    return {**anomalib_scoring(model, to_input, train, test, cfg), "fit": fit}


def build_anomalib_fastflow(cfg: Config):
    """anomalib's FastflowModel with its CNN branch built for tf_efficientnet_lite0 (see the module docstring)."""
    import timm
    from anomalib.models.image.fastflow.anomaly_map import AnomalyMapGenerator
    from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block
    from torch import nn

    class CnnFastflowModel(FastflowModel):
        """`FastflowModel.__init__`'s resnet branch, verbatim but for the backbone name and out_indices."""

        def __init__(
            self,
            input_size: tuple[int, int],
            backbone: str,
            out_indices: list[int],
            flow_steps: int = 8,
            conv3x3_only: bool = False,
            hidden_ratio: float = 1.0,
        ) -> None:
            nn.Module.__init__(self)  # skips FastflowModel.__init__, which rejects the backbone name
            self.input_size = input_size
            self.feature_extractor = timm.create_model(
                backbone, pretrained=False, features_only=True, out_indices=out_indices
            )
            channels = self.feature_extractor.feature_info.channels()
            scales = self.feature_extractor.feature_info.reduction()
            self.norms = nn.ModuleList()
            for channel, scale in zip(channels, scales, strict=True):
                self.norms.append(
                    nn.LayerNorm(
                        [channel, int(input_size[0] / scale), int(input_size[1] / scale)], elementwise_affine=True
                    )
                )
            for parameter in self.feature_extractor.parameters():
                parameter.requires_grad = False
            self.fast_flow_blocks = nn.ModuleList()
            for channel, scale in zip(channels, scales, strict=True):
                self.fast_flow_blocks.append(
                    create_fast_flow_block(
                        input_dimensions=[channel, int(input_size[0] / scale), int(input_size[1] / scale)],
                        conv3x3_only=conv3x3_only,
                        hidden_ratio=hidden_ratio,
                        flow_steps=flow_steps,
                    )
                )
            self.anomaly_map_generator = AnomalyMapGenerator(input_size=input_size)

    size = (cfg.image_size, cfg.image_size)
    return CnnFastflowModel(size, BACKBONE, list(INSPECTOR_LAYERS))


def run_anomalib_fastflow(train: list[Path], test: list[Path], cfg: Config) -> dict:
    """Train and score anomalib's FastFlow torch model as its Lightning module would (own process)."""
    import cv2  # noqa: F401
    import torch

    limit_threads(cfg.threads)
    from anomalib.models.image.fastflow.loss import FastflowLoss

    from inspector.data import read_image

    to_input = anomalib_input(cfg.image_size)
    torch.manual_seed(cfg.seed)  # flow initialisation and FrEIA's permutations
    rss_before, cpu_before = current_rss_mib(), cpu_seconds()
    start = time.perf_counter()
    model = build_anomalib_fastflow(cfg)
    weights = load_offline_state(model.feature_extractor, BACKBONE, INSPECTOR_LAYERS)
    optimizer = torch.optim.Adam(model.parameters(), lr=FASTFLOW_LR, weight_decay=FASTFLOW_WEIGHT_DECAY)
    loss_fn = FastflowLoss()
    shuffle = torch.Generator().manual_seed(cfg.seed)
    model.train()
    built = time.perf_counter()
    history = []
    for _ in range(cfg.epochs):
        total = 0.0
        for rows in torch.randperm(len(train), generator=shuffle).split(cfg.batch_size):
            loss = loss_fn(*model(to_input([read_image(train[i]) for i in rows.tolist()])))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        history.append(total / len(train))
        print(f"[anomalib fastflow] epoch {len(history)}/{cfg.epochs}: loss {history[-1]:.5g}", file=sys.stderr)
    end = time.perf_counter()
    fit = {
        "seconds": end - start,
        "cpu_seconds": cpu_seconds() - cpu_before,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_fit_mib": rss_before,
        "build_seconds": built - start,
        "train_seconds": end - built,
        "epochs": cfg.epochs,
        "loss_history": history,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "weights_source": weights,
        "weights_module": "FastflowModel.feature_extractor",
    }
    return {**anomalib_scoring(model, to_input, train, test, cfg), "fit": fit}


RUNNERS = {
    ("inspector", "padim"): lambda *args: run_isolated(run_inspector, "padim", *args),
    ("inspector", "fastflow"): lambda *args: run_isolated(run_inspector, "fastflow", *args),
    ("anomalib", "padim"): lambda *args: run_isolated(run_anomalib_padim, *args),
    ("anomalib", "fastflow"): lambda *args: run_isolated(run_anomalib_fastflow, *args),
}


# ---- parent: evaluation and report ----------------------------------------------------------------------


def row_label(tool: str, model: str, result: dict) -> str:
    if tool == "inspector":
        return f"inspector {package_version('inspector') or 'src'} {model} ({result['fit']['runtime']})"
    name = {"padim": "PadimModel", "fastflow": "FastflowModel"}[model]
    return f"anomalib {package_version('anomalib')} {name} (torch)"


DETAIL_COLUMNS = {
    "fit CPU s": lambda r: f"{r['fit']['cpu_seconds']:.1f}",
    "RSS before fit MiB": lambda r: f"{r['fit']['rss_before_fit_mib']:.0f}",
    "CPU ms/img": lambda r: f"{r['cpu_ms_summary']['median']:.1f}",
    "p90 ms/img": lambda r: f"{r['ms_summary']['p90']:.1f}",
    **STAGE_COLUMNS,
    "final loss": lambda r: f"{r['fit']['loss_history'][-1]:.5g}" if "loss_history" in r["fit"] else "-",
}
# (metric, higher is better, format): inspector must be at least as good as anomalib on each.
BARS = {
    "image AUROC": (lambda r: r["metrics"]["image_auroc"], True, "{:.4f}"),
    "pixel AUROC": (lambda r: r["metrics"]["pixel_auroc"], True, "{:.4f}"),
    "median ms/img": (lambda r: r["ms_summary"]["median"], False, "{:.1f}"),
    "peak RSS MiB (fit)": (lambda r: r["fit"]["peak_rss_mib"], False, "{:.0f}"),
}


def bar_verdicts(results: dict[tuple[str, str], dict]) -> list[list[str]]:
    """One row per model with both tools: 'meets'/'MISSES' (inspector vs anomalib) for each bar."""
    rows = []
    for model in MODELS:
        ours, theirs = results.get(("inspector", model)), results.get(("anomalib", model))
        if ours is None or theirs is None:
            continue
        cells = []
        for value, higher_better, fmt in BARS.values():
            a, b = value(ours), value(theirs)
            ok = a >= b if higher_better else a <= b
            cells.append(f"{'meets' if ok else 'MISSES'} ({fmt.format(a)} vs {fmt.format(b)})")
        rows.append([model, *cells])
    return rows


def print_report(results: dict[tuple[str, str], dict]) -> None:
    """The summary table (one row per tool and model), where the time goes, and the bars."""
    summary = [[row_label(*key, r), *(cell(r) for cell in SUMMARY_COLUMNS.values())] for key, r in results.items()]
    print(markdown_table(["tool / model", *SUMMARY_COLUMNS], summary), end="\n\n")
    detail = [[" ".join(key), *(cell(r) for cell in DETAIL_COLUMNS.values())] for key, r in results.items()]
    print(markdown_table(["tool / model", *DETAIL_COLUMNS], detail))
    verdicts = bar_verdicts(results)
    if verdicts:
        print()
        print(markdown_table(["inspector vs anomalib", *BARS], verdicts))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="folder holding the category")
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--limit-train", type=int, default=None, help="use N training images (evenly spread)")
    parser.add_argument("--limit-test", type=int, default=None, help="use N test images (evenly spread)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS))
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--epochs", type=int, default=Config.epochs, help="FastFlow training epochs (both tools)")
    parser.add_argument("--n-features", type=int, default=Config.n_features, help="PaDiM channels kept (both)")
    parser.add_argument("--threads", type=int, default=Config.threads)
    parser.add_argument("--warmup", type=int, default=Config.warmup, help="untimed warm-up images per run")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write all numbers here")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown or not args.models:
        parser.error(f"--models: choose from {', '.join(MODELS)} (got {args.models})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config(epochs=args.epochs, n_features=args.n_features, threads=args.threads, warmup=args.warmup)
    limit_threads(cfg.threads)  # environment inherited by the spawned children
    source_at_start = source_digest("inspector")
    train, test = list_dataset(args.data_root, args.category, args.limit_train, args.limit_test)
    labels = np.array([s.is_defect for s in test])
    masks = load_masks(test, (cfg.image_size, cfg.image_size))
    test_paths = [s.path for s in test]
    print(
        f"{args.category}: {len(train)} train, {len(test)} test ({labels.sum()} defective); "
        f"{cfg.threads} threads; models {args.models}; FastFlow {cfg.epochs} epochs",
        file=sys.stderr,
    )

    results: dict[tuple[str, str], dict] = {}
    for model in args.models:
        for tool in args.tools:
            print(f"[{tool} {model}] fitting and scoring in a fresh process ...", file=sys.stderr, flush=True)
            load_before = load_average()
            result = RUNNERS[tool, model](train, test_paths, cfg)
            result["load_average"] = {"before": load_before, "after": load_average()}
            result["metrics"] = evaluate_maps(result, labels, masks)
            result["ms_summary"] = summarize_ms(result["ms"])
            result["cpu_ms_summary"] = summarize_ms(result["cpu_ms"])
            results[tool, model] = result
            done = f"fit {result['fit']['seconds']:.1f} s, median {result['ms_summary']['median']:.1f} ms/img"
            print(f"[{tool} {model}] {done}, {result['metrics']}", file=sys.stderr, flush=True)

    print_report(results)
    if args.json:
        config = {
            **asdict(cfg),
            "backbone": BACKBONE,
            "inspector_layers": INSPECTOR_LAYERS,
            "anomalib_layers": ANOMALIB_LAYERS,
            "aupro_fpr_limit": AUPRO_FPR_LIMIT,
            "anomalib_fastflow_optimizer": {"name": "Adam", "lr": FASTFLOW_LR, "weight_decay": FASTFLOW_WEIGHT_DECAY},
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
        per_run = {model: {} for model in args.models}
        for (tool, model), r in results.items():
            per_run[model][tool] = {k: v for k, v in r.items() if k != "maps"}
        data = {
            "benchmark": "padim_fastflow",
            "config": config,
            "machine": machine_info(),
            "dataset": dataset,
            "inspector_source_sha256": source_at_start,
            "results": per_run,
            "bars": {row[0]: dict(zip(BARS, row[1:], strict=True)) for row in bar_verdicts(results)},
        }
        print(f"wrote {write_json(args.json, data)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
