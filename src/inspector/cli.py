"""The `inspector` command line: fit, evaluate, predict, demo and data download.

One convention everywhere: `--model` names a method (fit only), `--model-dir` names a fitted model (default
models/<category>/), `--data-root` + `--category` name data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_DATA_ROOT = "datasets/mvtec"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose or not _is_user_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _is_user_error(exc: Exception) -> bool:
    from inspector.config import ConfigError
    from inspector.data import CategoryNotFoundError, ImageReadError
    from inspector.features.backbones import BackboneWeightsError
    from inspector.modeldir import ModelDirError

    known = (UserError, ConfigError, CategoryNotFoundError, ImageReadError, BackboneWeightsError, ModelDirError)
    return isinstance(exc, known) or type(exc) is ValueError or type(exc) is FileNotFoundError


# ---- argument helpers -------------------------------------------------------------------------------------


def _add_data_args(p: argparse.ArgumentParser, category_required: bool = False) -> None:
    p.add_argument("--category", required=category_required, help="category folder name under --data-root")
    p.add_argument(
        "--data-root",
        default=os.environ.get("INSPECTOR_DATA_ROOT", DEFAULT_DATA_ROOT),
        help="folder holding <category>/train/good, test/<type>, ground_truth/<type> "
        "(default: $INSPECTOR_DATA_ROOT or %(default)s)",
    )


def _add_model_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", type=Path, help="fitted model directory (default: models/<category>)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["auto", "onnxruntime", "torch"], help="network runtime (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all available cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _model_dir(args: argparse.Namespace) -> Path:
    if args.model_dir:
        return args.model_dir
    if args.category:
        return Path("models") / args.category
    raise UserError("say which model: --model-dir DIR, or --category NAME for models/NAME")


def _load(args: argparse.Namespace):
    from inspector.models import load_model

    overrides = {k: getattr(args, k) for k in ("runtime", "threads") if getattr(args, k, None) is not None}
    return load_model(_model_dir(args), **overrides)


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace(",", " ").split())


def _size(text: str) -> int | tuple[int, int]:
    values = _int_tuple(text.replace("x", " "))
    return values[0] if len(values) == 1 else (values[0], values[1])


def _set_pairs(pairs: list[str]) -> dict[str, Any]:
    """--set key=value with YAML-typed values, for any model parameter without its own flag."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--set expects key=value, got '{pair}'")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


# ---- fit ----------------------------------------------------------------------------------------------------


def cmd_fit(args: argparse.Namespace) -> int:
    from inspector.config import find_category_config, read_config, resolve_fit_settings
    from inspector.data import Dataset, list_images
    from inspector.models import create_model

    if args.train_dir:
        train_dir = Path(args.train_dir)
        if not train_dir.is_dir():
            raise UserError(f"--train-dir {train_dir} is not a folder")
        images = list_images(train_dir)
        if not images:
            raise UserError(f"no images in {train_dir}")
        data = {"train_dir": str(train_dir.resolve()), "category": args.category}
    elif args.category:
        dataset = Dataset(args.data_root, args.category)
        images = dataset.train()
        train_dir = dataset.train_dir
        data = {"data_root": str(Path(args.data_root).resolve()), "category": args.category,
                "train_dir": str(train_dir.resolve())}  # fmt: skip
    else:
        raise UserError("say what to fit on: --category NAME (with --data-root) or --train-dir DIR")

    config_path = Path(args.config) if args.config else find_category_config(args.category)
    config = read_config(config_path) if config_path else {}
    overrides = {
        "backbone": args.backbone, "weights": args.weights, "layers": args.layers, "image_size": args.image_size,
        "crop_size": args.crop_size, "batch_size": args.batch_size, "runtime": args.runtime, "threads": args.threads,
        "seed": args.seed, "coreset_ratio": args.coreset_ratio, "index": args.index, "embed_dim": args.embed_dim,
        "reweight": args.reweight, "epochs": args.epochs, "n_features": args.n_features, **_set_pairs(args.set),
    }  # fmt: skip
    if args.crop_size == 0:
        overrides["crop_size"] = None
        config.pop("crop_size", None)
    kind, params = resolve_fit_settings(config, args.model, overrides)
    try:
        model = create_model(kind, **params)
    except TypeError as exc:
        raise UserError(f"{kind} does not take that setting: {exc}") from exc
    out = args.out or Path("models") / (args.category or train_dir.name)
    source = f" (config {config_path})" if config_path else ""
    print(f"fitting {kind} on {len(images)} images from {train_dir}{source}", file=sys.stderr)
    model.fit(images, progress=not args.quiet)
    data["config"] = str(config_path) if config_path else None
    model.save(out, data=data)
    info = model.fit_info_
    bank = f", bank {info['bank_size']} patches" if "bank_size" in info else ""
    print(f"fitted {kind}: {info['n_images']} images{bank}, {info['seconds']:.1f} s, "
          f"peak memory {info['peak_rss_mb']:.0f} MiB -> {out}")  # fmt: skip
    return 0


# ---- evaluate -----------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from inspector.data import Dataset
    from inspector.evaluate import evaluate, write_scores_csv

    model_dir = _model_dir(args)
    model = _load(args)
    category = args.category or model.data_info_.get("category")
    if not category:
        raise UserError("say which data to evaluate on: --category NAME")
    dataset = Dataset(args.data_root, category)
    report, results = evaluate(model, dataset, progress=not args.quiet)
    csv_path = args.csv or model_dir / f"scores_{category}.csv"
    write_scores_csv(csv_path, results)
    report = {"model": model.kind, "model_dir": str(model_dir), "category": category, **report,
              "scores_csv": str(csv_path)}  # fmt: skip
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0


def _print_report(report: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = [("image AUROC", report["image_auroc"]), ("pixel AUROC", report["pixel_auroc"]),
            ("AUPRO (FPR<=0.3)", report["aupro"]), ("image F1 max", report["image_f1_max"]),
            ("train / test images", f"{report['n_train']} / {report['n_test']}"),
            ("ms per image (median, batch 1)", report["ms_per_image"])]  # fmt: skip
    print(f"{report['model']} on {report['category']} ({report['model_dir']})")
    for name, value in rows:
        print(f"  {name:<32}{fmt(value)}")
    print(f"  per-image scores: {report['scores_csv']}")


# ---- predict ------------------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    from inspector.data import read_image
    from inspector.visualize import overlay, write_png

    model = _load(args)
    rows: list[tuple[Path, Any, Any]] = []
    failures = 0
    for path in args.images:
        try:
            image = read_image(path)
        except Exception as exc:  # one bad file must not cost the rest of the batch
            print(json.dumps({"path": str(path), "error": str(exc)}))
            failures += 1
            continue
        start = time.perf_counter()
        result = model.score([image])
        ms = (time.perf_counter() - start) * 1e3
        amap = result.maps[0]
        print(json.dumps({"path": str(path), "score": round(float(result.scores[0]), 6),
                          "map_max": round(float(amap.max()), 6), "map_mean": round(float(amap.mean()), 6),
                          "ms": round(ms, 2)}), flush=True)  # fmt: skip
        if args.heatmaps:
            rows.append((Path(path), image, amap))
    if args.heatmaps and rows:
        # One colour scale for the whole call, so a hotter-looking image really scored higher.
        vmin = min(float(a.min()) for _, _, a in rows)
        vmax = max(float(a.max()) for _, _, a in rows)
        for path, image, amap in rows:
            full = model.preprocessing_.map_to_image(amap, image.shape[:2])
            write_png(Path(args.heatmaps) / f"{path.stem}_heatmap.png", overlay(image, full, vmin, vmax))
        print(f"wrote {len(rows)} heatmaps to {args.heatmaps} (colour scale {vmin:.3g}..{vmax:.3g})", file=sys.stderr)
    return 1 if failures else 0


# ---- demo -----------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from inspector.demo import run_demo

    return run_demo(Path(args.workdir), progress=not args.quiet)


# ---- data ---------------------------------------------------------------------------------------------------


def cmd_data_download(args: argparse.Namespace) -> int:
    from inspector.data.download import download_category

    path = download_category(args.category, Path(args.data_root), url=args.url, sha256=args.sha256,
                             progress=not args.quiet)  # fmt: skip
    print(f"{args.category} ready at {path}")
    return 0


def cmd_data_synthetic(args: argparse.Namespace) -> int:
    from inspector.data.synthetic import make_category

    path = make_category(Path(args.data_root), args.category, seed=args.seed)
    print(f"synthetic category written to {path}")
    return 0


# ---- parser -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspector", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    p = command("fit", cmd_fit, "fit a model on good images")
    _add_data_args(p)
    p.add_argument("--train-dir", help="fit on a plain folder of good images instead of <category>/train/good")
    p.add_argument("--model", choices=["patchcore", "padim", "fastflow"], help="method (default: config or patchcore)")
    p.add_argument("--out", type=Path, help="model directory to write (default: models/<category>)")
    p.add_argument("--config", help="settings file (default: configs/mvtec/<category>.yaml when present)")
    p.add_argument("--backbone", help="timm backbone name (default tf_efficientnet_lite0, offline weights)")
    p.add_argument("--weights", help="local backbone weights file (.pth/.safetensors) for air-gapped machines")
    p.add_argument("--layers", type=_int_tuple, help="backbone stages to use, e.g. '2,3'")
    p.add_argument("--image-size", type=_size, help="resize to N or HxW pixels")
    p.add_argument("--crop-size", type=_size, help="centre-crop to N or HxW after resizing (0: no crop)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--coreset-ratio", type=float, help="PatchCore: fraction of patches kept in the memory bank")
    p.add_argument("--index", choices=["flat", "ivf", "hnsw"], help="PatchCore: FAISS index kind (default flat)")
    p.add_argument("--embed-dim", type=int, help="PatchCore: project patch features to this many dimensions")
    p.add_argument("--reweight", action="store_true", default=None, help="PatchCore: the paper's score re-weighting")
    p.add_argument("--n-features", type=int, help="PaDiM: random channel subset size")
    p.add_argument("--epochs", type=int, help="FastFlow: training epochs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other model parameter")
    _add_runtime_args(p)

    p = command("evaluate", cmd_evaluate, "score the labelled test set and report AUROC, AUPRO, F1 and latency")
    _add_model_dir_arg(p)
    _add_data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--csv", type=Path, help="per-image scores CSV (default: <model-dir>/scores_<category>.csv)")
    _add_runtime_args(p)

    p = command("predict", cmd_predict, "score images; one JSON line each")
    _add_model_dir_arg(p)
    p.add_argument("--category", help="shorthand for --model-dir models/<category>")
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--heatmaps", type=Path, help="write <name>_heatmap.png overlays to this folder")
    _add_runtime_args(p)

    p = command("demo", cmd_demo, "generate a synthetic category, fit, evaluate and print the metrics (offline)")
    p.add_argument("--workdir", default="runs/demo", help="where data, model and heatmaps go (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    data = command("data", lambda a: data.print_help() or EXIT_USER_ERROR, "get data sets")
    data_sub = data.add_subparsers(title="data commands", metavar="ACTION")
    p = data_sub.add_parser("download", help="download one MVTec AD category (needs internet)")
    p.set_defaults(handler=cmd_data_download)
    p.add_argument("dataset", choices=["mvtec"])
    _add_data_args(p, category_required=True)
    p.add_argument("--url", help="archive URL (default: the official one, or $INSPECTOR_MVTEC_URL)")
    p.add_argument("--sha256", help="expected archive checksum")
    p.add_argument("-q", "--quiet", action="store_true")
    p = data_sub.add_parser("synthetic", help="generate a synthetic MVTec-style category (offline)")
    p.set_defaults(handler=cmd_data_synthetic)
    _add_data_args(p)
    p.set_defaults(category="synthetic")
    p.add_argument("--seed", type=int, default=0)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
