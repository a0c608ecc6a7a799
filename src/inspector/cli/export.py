"""`inspector export`: a fitted model -> a bundle for the line box, refused unless it passes the parity gate
(the scoring half plus, for fp16/int8, the onnx package)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from inspector.cli.arguments import Subcommands, UsageError, add_command, add_model_dir_arg, resolve_model_dir

PRECISIONS = ("fp32", "fp16", "int8")  # runtime.precision.PRECISIONS, without importing numpy for --help


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "export", run, "write a line-box bundle, checked against the fitted model")
    add_model_dir_arg(p)
    p.add_argument("--category", help="shorthand for --model-dir models/<category>")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced if it is a bundle)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="network precision: fp32 (default), fp16, or int8 calibrated on the model's golden training images",
    )
    p.add_argument("--threads", type=int, help="CPU threads for scoring the golden set (default: all cores)")


def run(args: argparse.Namespace) -> int:
    from inspector.components.knn import set_search_threads
    from inspector.export import ParityError, export_bundle

    set_search_threads(args.threads)
    model_dir = resolve_model_dir(args)
    if args.out is None:
        raise UsageError("say where to write the bundle: --out DIR")
    try:
        report = export_bundle(model_dir, args.out, args.precision, args.threads)
    except ParityError as exc:
        failed = args.out.parent / f"{args.out.name}.parity-failed.json"
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(json.dumps(exc.report.to_dict(), indent=2))
        print(f"per-image differences: {failed}", file=sys.stderr)
        raise
    if report.calibration is None:
        print(f"note: {model_dir} has no calibration, so verdicts were not compared", file=sys.stderr)
    print(f"{report.summary()} -> {args.out}")
    return 0
