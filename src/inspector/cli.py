"""The `inspector` command line: fit, evaluate, calibrate, predict, demo and data download.

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
from datetime import datetime
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
    from inspector.calibration import CalibrationError
    from inspector.config import ConfigError
    from inspector.data import CategoryNotFoundError, ImageReadError
    from inspector.features.backbones import BackboneWeightsError
    from inspector.modeldir import ModelDirError

    known = (UserError, ConfigError, CategoryNotFoundError, ImageReadError, BackboneWeightsError, ModelDirError,
             CalibrationError)  # fmt: skip
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


def _active_calibration(model_dir: Path):
    """The model's active calibration (None, with a note, when it has none); a stale one is an error."""
    from inspector.calibration import load_active_calibration

    calibration = load_active_calibration(model_dir)
    if calibration is None:
        print(f"note: {model_dir} has no calibration, so no pass/fail verdicts; run `inspector calibrate`",
              file=sys.stderr)  # fmt: skip
    return calibration


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
        "image_score": args.image_score, "epochs": args.epochs, "n_features": args.n_features, **_set_pairs(args.set),
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
    from inspector.evaluate import decision_report, evaluate, write_scores_csv

    model_dir = _model_dir(args)
    model = _load(args)
    category = args.category or model.data_info_.get("category")
    if not category:
        raise UserError("say which data to evaluate on: --category NAME")
    calibration = _active_calibration(model_dir)
    dataset = Dataset(args.data_root, category)
    report, results = evaluate(model, dataset, progress=not args.quiet)
    report.update(decision_report(results, calibration))
    if calibration and calibration.data.get("category") == category and not calibration.data.get("holdout"):
        print(
            f"note: calibration {calibration.name} was chosen on this test set, so its rates here are optimistic;"
            " `inspector calibrate --holdout 0.5` measures them on images it did not choose on",
            file=sys.stderr,
        )
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
    if report["calibration"]:
        c = report["calibration"]
        rows += [(f"false-reject rate at {c['image_threshold']:.4g}", report["false_reject_rate"]),
                 ("escape rate (defects passed)", report["escape_rate"])]  # fmt: skip
    for name, value in rows:
        print(f"  {name:<32}{fmt(value)}")
    print(f"  per-image scores: {report['scores_csv']}")


# ---- calibrate ----------------------------------------------------------------------------------------------


def cmd_calibrate(args: argparse.Namespace) -> int:
    from inspector.calibration import activate_calibration, save_calibration
    from inspector.calibration.report import summary, write_html, write_plots
    from inspector.calibration.rules import check_fraction, check_targets
    from inspector.calibration.store import ARCHIVE_DIR
    from inspector.calibration.workflow import calibrate, score_images, split_holdout

    model_dir = _model_dir(args)
    if args.list:
        return _list_calibrations(model_dir)
    if args.activate:
        c = activate_calibration(model_dir, args.activate)
        print(f"active calibration of {model_dir}: {c.name} (rule {c.rule}, threshold {c.image_threshold:.6g})")
        return 0
    if args.method:  # fail before the slow scoring, not after it
        check_targets(args.method, args.target_fpr, args.target_recall)
    check_fraction("confidence", args.confidence)
    model = _load(args)
    samples, data = _calibration_images(args, model)
    holdout: list[Any] = []
    if args.holdout:
        samples, holdout = split_holdout(samples, args.holdout, args.seed)
        data["holdout"] = {"fraction": args.holdout, "seed": args.seed}
    scored = score_images(model, samples, progress=not args.quiet)
    held = score_images(model, holdout, keep_maps=False, progress=not args.quiet) if holdout else None
    calibration = calibrate(scored, args.method, args.target_fpr, args.target_recall, args.confidence,
                            args.review_band, args.pixel_quantile, args.name or "", data, held)  # fmt: skip
    archived = save_calibration(model_dir, calibration, activate=not args.no_activate)
    folder = model_dir / ARCHIVE_DIR / calibration.name
    plots = write_plots(folder, scored.labels, scored.scores, calibration)
    report = write_html(folder, calibration, plots)
    print(summary(calibration))
    active = "not activated (--no-activate)" if args.no_activate else f"active: {model_dir / 'calibration.json'}"
    print(f"  wrote {archived} ({active})\n  plots {', '.join(p.name for p in plots)} and {report.name} in {folder}")
    return 0


def _calibration_images(args: argparse.Namespace, model: Any) -> tuple[list[Any], dict[str, Any]]:
    """The chosen images minus the model's training images (their scores are optimistic), and where they came from."""
    from inspector.calibration.workflow import category_images, labelled_folder_images, normal_images, training_overlap

    if args.normal_dir:
        chosen = normal_images(args.normal_dir)
    elif args.images_dir:
        chosen = labelled_folder_images(args.images_dir)
    else:
        category = args.category or model.data_info_.get("category")
        if not category:
            raise UserError("say which images to calibrate on: --category NAME, --normal-dir DIR or --images-dir DIR")
        chosen = category_images(args.data_root, category)
    samples, data = chosen.samples, dict(chosen.source)
    if not samples:
        raise UserError(f"no images found in {data.get('dir') or data.get('category')}")
    overlap = training_overlap(samples, model)
    if overlap is None:
        print("WARNING: the model does not record its training images, so they cannot be left out; make sure these "
              "images were not used to fit it", file=sys.stderr)  # fmt: skip
    elif overlap and args.allow_train:
        print(f"WARNING: {len(overlap)} of {len(samples)} images were used to fit this model and are kept "
              "(--allow-train): their scores are optimistic, so the threshold comes out too low and the line will "
              "reject more good parts than stated", file=sys.stderr)  # fmt: skip
        data["training_images_included"] = len(overlap)
    elif overlap:
        if len(overlap) == len(samples):
            raise UserError(f"all {len(samples)} images were used to fit this model; their optimistic scores would "
                            "set the threshold too low. Calibrate on held-out images (or --allow-train)")  # fmt: skip
        print(f"WARNING: {len(overlap)} of {len(samples)} images were used to fit this model (e.g. "
              f"{overlap[0].path}); their scores are optimistic, so they are left out (--allow-train keeps them)",
              file=sys.stderr)  # fmt: skip
        left_out = set(overlap)
        samples = [s for s in samples if s not in left_out]
        data["training_images_excluded"] = len(overlap)
    return samples, data


def _list_calibrations(model_dir: Path) -> int:
    from inspector.calibration import list_calibrations, load_active_calibration
    from inspector.calibration.report import targets_text

    found = list_calibrations(model_dir)
    if not found:
        print(f"{model_dir} has no calibrations; run `inspector calibrate`")
        return 0
    active = load_active_calibration(model_dir, allow_stale=True)
    print(f"  {'name':<32}{'rule':<8}{'threshold':>12}  {'target':<30}created")
    for c in found:
        mark = "*" if active and active.name == c.name else " "
        print(f"{mark} {c.name:<32}{c.rule:<8}{c.image_threshold:>12.6g}  {targets_text(c):<30}{c.created}")
    print("(* active)")
    return 0


def _band(text: str) -> tuple[float, float]:
    """--review-band LOW:HIGH in multiples of the threshold."""
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH such as 0.9:1.2, got '{text}'") from None
    if not 0 < low <= 1.0 <= high:
        raise argparse.ArgumentTypeError(f"need 0 < LOW <= 1 <= HIGH (multiples of the threshold), got '{text}'")
    return low, high


# ---- predict ------------------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> int:
    from inspector.calibration.report import outline_regions
    from inspector.data import read_image
    from inspector.visualize import overlay, write_png

    model = _load(args)
    calibration = _active_calibration(_model_dir(args))
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
        score = float(result.scores[0])
        print(json.dumps({"path": str(path), "score": round(score, 6),
                          "normalized_score": round(calibration.normalized(score), 6) if calibration else None,
                          "verdict": calibration.verdict(score) if calibration else None,
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
            picture = overlay(image, full, vmin, vmax)
            if calibration and calibration.pixel_threshold is not None:  # outline what the calibration calls defect
                picture = outline_regions(picture, full, calibration.pixel_threshold)
            write_png(Path(args.heatmaps) / f"{path.stem}_heatmap.png", picture)
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


# ---- serve ------------------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from inspector.service.app import serve
    from inspector.service.config import ModelSpec, ServiceConfigError, load_settings

    overrides = {"host": args.host, "port": args.port, "workers": args.workers, "queue_size": args.queue_size,
                 "threads": args.threads, "store.dir": args.store_dir,
                 "models": [ModelSpec.parse(m) for m in args.model_dir] if args.model_dir else None}  # fmt: skip
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ServiceConfigError as exc:
        raise UserError(str(exc)) from exc
    if not settings.models:
        raise UserError("no model to serve: give --model-dir DIR (or `models:` in the config)")
    serve(settings)
    return 0


# ---- dataset ------------------------------------------------------------------------------------------------


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from inspector.service.export import export_reviewed

    if not args.reviewed:
        raise UserError("say which records: --reviewed (operator verdicts are the labels; machine verdicts are not)")
    counts = export_reviewed(args.store_dir, args.out, model=args.model, since=args.since, good_split=args.good_split)
    for folder, n in sorted(counts.items()):
        print(f"{n:6d}  {args.out / folder}")
    print(f"exported {sum(counts.values())} reviewed inspections to {args.out}")
    return 0


# ---- parser -------------------------------------------------------------------------------------------------

CALIBRATE_HELP = """\
images (scores of images the model was fitted on are optimistic and are left out):
  --category NAME          the category's labelled test/ (+ validation/good); default: the model's category
  --normal-dir DIR         good images only: only a false-reject target can be set (rule normal)
  --images-dir DIR         DIR/good/ plus one folder per defect type

rules (a part fails when its score >= the threshold):
  f1      highest F1 on the precision-recall curve (needs good and defective images)
  youden  highest recall - false-reject rate on the ROC curve (needs both)
  fpr     lowest threshold with false-reject rate <= --target-fpr on these images (most defects caught)
  recall  highest threshold with recall >= --target-recall on these images (fewest good parts failed)
  normal  the k-th highest good score, k chosen so that the false-reject rate is <= --target-fpr with
          --confidence (order statistics, no assumption on the score distribution; never simply the
          maximum). When there are too few good images for that, it takes the highest one, says so and
          states the bound it does meet.

scores: raw model scores, and normalised = raw / threshold, so 1.0 is the threshold and 1.3 means 30%
above it. --review-band 0.9:1.2 sends normalised scores in [0.9, 1.2] to a person; below passes, above fails.

writes <model-dir>/calibrations/<name>.json and makes it the active <model-dir>/calibration.json (predict,
evaluate and the service use the active one; no re-fit or re-export), plus roc.png, pr.png,
histogram.png, rates.png and report.html in <model-dir>/calibrations/<name>/.

examples:
  inspector calibrate --model-dir models/bottle --category bottle --holdout 0.5
  inspector calibrate --model-dir models/bottle --normal-dir holdout/good --target-fpr 0.005
  inspector calibrate --model-dir models/bottle --category bottle --method recall --target-recall 0.995
  inspector calibrate --model-dir models/bottle --list
  inspector calibrate --model-dir models/bottle --activate fpr-20250101T120000
"""


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
    p.add_argument("--image-score", choices=["map", "patch", "reweighted"],
                   help="PatchCore: image score = peak of the smoothed map (default), max patch distance, or the"
                   " paper's re-weighted max")  # fmt: skip
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

    p = command("calibrate", cmd_calibrate, "choose the pass/fail threshold from held-out images and report it")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = CALIBRATE_HELP
    _add_model_dir_arg(p)
    _add_data_args(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--normal-dir", type=Path, help="calibrate on a folder of good images only (held out)")
    source.add_argument("--images-dir", type=Path, help="calibrate on a folder with good/ and one folder per defect")
    p.add_argument("--method", choices=["f1", "youden", "fpr", "recall", "normal"],
                   help="threshold rule (default: recall/fpr when a target is given, normal for good images only, "
                   "else f1)")  # fmt: skip
    p.add_argument("--target-fpr", type=float, help="false-reject target: share of good parts failed, e.g. 0.01")
    p.add_argument("--target-recall", type=float, help="recall target: share of defects caught, e.g. 0.995")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the stated bounds (default 0.95)")
    p.add_argument(
        "--review-band",
        type=_band,
        metavar="LOW:HIGH",
        help="normalised scores in [LOW, HIGH] go to a person, e.g. 0.9:1.2 (multiples of the threshold)",
    )
    p.add_argument(
        "--pixel-quantile",
        type=float,
        default=0.999,
        help="without masks: pixel threshold = this quantile of good images' maps (default %(default)s)",
    )
    p.add_argument(
        "--holdout",
        type=float,
        metavar="FRACTION",
        help="keep this share of every class aside and report the rates measured on it, e.g. 0.5",
    )
    p.add_argument("--seed", type=int, default=0, help="random split for --holdout (default 0)")
    p.add_argument("--allow-train", action="store_true", help="keep images the model was fitted on (optimistic)")
    p.add_argument("--name", help="calibration name (default <rule>-<UTC time>)")
    p.add_argument("--no-activate", action="store_true", help="archive the calibration without making it active")
    p.add_argument("--list", action="store_true", help="list the model's calibrations and exit")
    p.add_argument("--activate", metavar="NAME", help="make an archived calibration the active one and exit")
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

    from inspector.service.config import settings_help

    p = command("serve", cmd_serve, "run the line-side inspection service (HTTP API, OpenAPI at /docs)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = settings_help()
    p.add_argument("--config", type=Path, help="service config, YAML or TOML (default: $INSPECTOR_SERVICE_CONFIG)")
    p.add_argument("--model-dir", action="append", metavar="[NAME=]DIR",
                   help="fitted model to serve (repeat for several; NAME defaults to the folder name)")  # fmt: skip
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--store-dir", type=Path, help="where inspections are recorded (default ./inspections)")
    p.add_argument("--workers", type=int, help="inference worker threads (default 1)")
    p.add_argument("--threads", type=int, help="CPU threads per worker (default: cores / workers)")
    p.add_argument("--queue-size", type=int, help="requests that may wait for a worker before 503 (default 4)")

    dataset = command("dataset", lambda a: dataset.print_help() or EXIT_USER_ERROR, "data sets from inspections")
    dataset_sub = dataset.add_subparsers(title="dataset commands", metavar="ACTION")
    p = dataset_sub.add_parser("export", help="write reviewed inspections as an MVTec-style folder for re-fitting")
    p.set_defaults(handler=cmd_dataset_export)
    p.add_argument("--store-dir", type=Path, default=Path("inspections"), help="service store (default %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="data root to write <model>/train/good, test/defect to")
    p.add_argument("--reviewed", action="store_true", help="export operator-reviewed inspections (required)")
    p.add_argument("--model", help="only this model's inspections")
    p.add_argument("--since", type=datetime.fromisoformat, help="only inspections from this time on (ISO 8601)")
    p.add_argument("--good-split", choices=["train", "test"], default="train",
                   help="reviewed good parts go to train/good (re-fit, default) or test/good (calibrate)")  # fmt: skip
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
