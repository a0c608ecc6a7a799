"""`inspector calibrate`: choose the pass/fail threshold from held-out images, archive it, activate it and report
it; also list and activate archived calibrations (the scoring half: no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from inspector.calibration.calibration import DEFAULT_CONFIDENCE, DEFAULT_PIXEL_QUANTILE, RuleName
from inspector.cli.arguments import (
    Subcommands,
    add_command,
    add_data_args,
    add_model_dir_arg,
    add_threads_args,
    band,
    resolve_model_dir,
)
from inspector.common.names import choices

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


def add_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "calibrate",
        run,
        "choose the pass/fail threshold from held-out images and report it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CALIBRATE_HELP,
    )
    add_model_dir_arg(p)
    add_data_args(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--normal-dir", type=Path, help="calibrate on a folder of good images only (held out)")
    source.add_argument("--images-dir", type=Path, help="calibrate on a folder with good/ and one folder per defect")
    p.add_argument(
        "--method",
        choices=choices(RuleName),
        help="threshold rule (default: recall/fpr when a target is given, normal for good images only, else f1)",
    )
    p.add_argument("--target-fpr", type=float, help="false-reject target: share of good parts failed, e.g. 0.01")
    p.add_argument("--target-recall", type=float, help="recall target: share of defects caught, e.g. 0.995")
    p.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        help="confidence of the stated bounds (default %(default)s)",
    )
    p.add_argument(
        "--review-band",
        type=band,
        metavar="LOW:HIGH",
        help="normalised scores in [LOW, HIGH] go to a person, e.g. 0.9:1.2 (multiples of the threshold)",
    )
    p.add_argument(
        "--pixel-quantile",
        type=float,
        default=DEFAULT_PIXEL_QUANTILE,
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
    add_threads_args(p)


def run(args: argparse.Namespace) -> int:
    from inspector.calibration import activate_calibration, save_calibration
    from inspector.calibration.report import summary, write_html, write_plots
    from inspector.calibration.rules import check_fraction, check_targets
    from inspector.calibration.store import ARCHIVE_DIR
    from inspector.calibration.workflow import calibrate, choose_images, score_images, split_holdout
    from inspector.components.knn import set_search_threads
    from inspector.models.scoring import load_scorer

    model_dir = resolve_model_dir(args)
    if args.list:
        return show_calibrations(model_dir)
    if args.activate:
        c = activate_calibration(model_dir, args.activate)
        print(f"active calibration of {model_dir}: {c.name} (rule {c.rule}, threshold {c.image_threshold:.6g})")
        return 0
    if args.method:  # fail before the slow scoring, not after it
        check_targets(args.method, args.target_fpr, args.target_recall)
    check_fraction("confidence", args.confidence)
    set_search_threads(args.threads)
    scorer = load_scorer(model_dir, threads=args.threads)
    chosen = choose_images(
        scorer,
        category=args.category,
        data_root=args.data_root,
        normal_dir=args.normal_dir,
        images_dir=args.images_dir,
        allow_train=args.allow_train,
    )
    for warning in chosen.warnings:  # e.g. training images left out, or kept with --allow-train
        print(f"WARNING: {warning}", file=sys.stderr)
    samples, data = chosen.samples, dict(chosen.source)
    holdout: list[Any] = []
    if args.holdout:
        samples, holdout = split_holdout(samples, args.holdout, args.seed)
        data["holdout"] = {"fraction": args.holdout, "seed": args.seed}
    scored = score_images(scorer, samples, progress=not args.quiet)
    held = score_images(scorer, holdout, keep_maps=False, progress=not args.quiet) if holdout else None
    calibration = calibrate(
        scored,
        args.method,
        args.target_fpr,
        args.target_recall,
        args.confidence,
        args.review_band,
        args.pixel_quantile,
        args.name or "",
        data,
        held,
    )
    archived = save_calibration(model_dir, calibration, activate=not args.no_activate)
    folder = model_dir / ARCHIVE_DIR / calibration.name
    plots = write_plots(folder, scored.labels, scored.scores, calibration)
    report = write_html(folder, calibration, plots)
    print(summary(calibration))
    active = "not activated (--no-activate)" if args.no_activate else f"active: {model_dir / 'calibration.json'}"
    print(f"  wrote {archived} ({active})\n  plots {', '.join(p.name for p in plots)} and {report.name} in {folder}")
    return 0


def show_calibrations(model_dir: Path) -> int:
    """`--list`: the archived calibrations, the active one marked."""
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
