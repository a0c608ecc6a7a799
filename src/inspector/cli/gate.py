"""`inspector gate`: may a model version go live? Checks it against a recipe's golden samples (the scoring half:
no torch); the service's promote runs the same check (calibration.gate)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inspector.cli.arguments import Subcommands, UsageError, add_command, add_model_dir_arg

EXIT_GATE_FAILED = 1

GATE_HELP = """\
golden samples: GOLDEN/good/ (known-good parts) and GOLDEN/defect/ (known defects), any image format.
The version fails when, under its active calibration, it fails a known-good part or passes a known defect
(its score moved to the wrong side of the review band, or of the threshold without a band). One line per failed
image, then a summary; exit status 0 passed, 1 failed, 2 cannot judge (no calibration, no images).

example:
  inspector gate --model-dir models/bottle.versions/v4 --golden golden/bottle/
"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(
        sub,
        "gate",
        run,
        "check a model version against a recipe's golden samples before it goes live",
        epilog=GATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_dir_arg(p)
    p.add_argument("--golden", type=Path, required=True, help="golden samples folder with good/ and defect/")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--threads", type=int, help="CPU threads (default: all available cores)")


def run(args: argparse.Namespace) -> int:
    from inspector.calibration import load_active_calibration
    from inspector.calibration.gate import run_gate
    from inspector.calibration.golden_samples import golden_samples
    from inspector.components.knn import set_search_threads
    from inspector.models.scoring import load_scorer

    if args.model_dir is None:
        raise UsageError("say which model version to check: --model-dir DIR")
    if not args.golden.is_dir():
        raise UsageError(f"golden samples folder {args.golden} does not exist")
    set_search_threads(args.threads)
    scorer = load_scorer(args.model_dir, threads=args.threads)
    report = run_gate(scorer, load_active_calibration(args.model_dir), golden_samples(args.golden))
    if args.json:
        print(json.dumps({"model_dir": str(args.model_dir), "golden": str(args.golden), **report.to_dict()}))
    else:
        for line in report.failure_lines():
            print(f"FAIL {line}")
        print(report.summary())
    return 0 if report.passed else EXIT_GATE_FAILED
