"""`inspector evaluate`: score the labelled test set and report AUROC, AUPRO, F1, latency and, with a calibration,
what the line would have decided (the scoring half: no torch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from inspector.cli.arguments import (
    Subcommands,
    UsageError,
    active_calibration,
    add_command,
    add_data_args,
    add_model_dir_arg,
    add_threads_args,
    resolve_model_dir,
)


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "evaluate", run, "score the labelled test set and report AUROC, AUPRO, F1 and latency")
    add_model_dir_arg(p)
    add_data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--csv", type=Path, help="per-image scores CSV (default: <model-dir>/scores_<category>.csv)")
    add_threads_args(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from inspector.calibration.rules import decision_report
    from inspector.components.knn import set_search_threads
    from inspector.data.mvtec import Dataset
    from inspector.evaluation.evaluate import evaluate, write_scores_csv
    from inspector.models.scoring import load_scorer

    set_search_threads(args.threads)
    model_dir = resolve_model_dir(args)
    scorer = load_scorer(model_dir, threads=args.threads)
    category = args.category or scorer.data_info.get("category")
    if not category:
        raise UsageError("say which data to evaluate on: --category NAME")
    calibration = active_calibration(model_dir)
    dataset = Dataset(args.data_root, category)
    report, results = evaluate(scorer, dataset, progress=not args.quiet)
    labels = np.array([r.sample.is_defect for r in results], dtype=bool)
    scores = np.array([r.score for r in results], dtype=np.float64)
    report.update(decision_report(labels, scores, calibration))
    if calibration and calibration.data.get("category") == category and not calibration.data.get("holdout"):
        print(
            f"note: calibration {calibration.name} was chosen on this test set, so its rates here are optimistic;"
            " `inspector calibrate --holdout 0.5` measures them on images it did not choose on",
            file=sys.stderr,
        )
    csv_path = args.csv or model_dir / f"scores_{category}.csv"
    write_scores_csv(csv_path, results)
    report = {
        "model": scorer.kind,
        "model_dir": str(model_dir),
        "category": category,
        **report,
        "scores_csv": str(csv_path),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = [
        ("image AUROC", report["image_auroc"]),
        ("pixel AUROC", report["pixel_auroc"]),
        ("AUPRO (FPR<=0.3)", report["aupro"]),
        ("image F1 max", report["image_f1_max"]),
        ("train / test images", f"{report['n_train']} / {report['n_test']}"),
        ("ms per image (median, batch 1)", report["ms_per_image"]),
    ]
    print(f"{report['model']} on {report['category']} ({report['model_dir']})")
    if report["calibration"]:
        c = report["calibration"]
        rows += [
            (f"false-reject rate at {c['image_threshold']:.4g}", report["false_reject_rate"]),
            ("escape rate (defects passed)", report["escape_rate"]),
        ]
    for name, value in rows:
        print(f"  {name:<32}{fmt(value)}")
    print(f"  per-image scores: {report['scores_csv']}")
