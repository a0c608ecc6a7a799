"""`inspector dataset export`: data sets from recorded inspections (operator reviews as labels)."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from inspector.cli.arguments import Subcommands, UsageError, help_handler


def add_parser(sub: Subcommands) -> None:
    dataset = sub.add_parser("dataset", help="data sets from inspections", description="data sets from inspections")
    dataset.set_defaults(handler=help_handler(dataset))  # without an action: print this group's help
    actions = dataset.add_subparsers(title="dataset commands", metavar="ACTION")

    p = actions.add_parser("export", help="write reviewed inspections as an MVTec-style folder for re-fitting")
    p.set_defaults(handler=run_export)
    p.add_argument("--store-dir", type=Path, default=Path("inspections"), help="service store (default %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="data root to write <model>/train/good, test/defect to")
    p.add_argument("--reviewed", action="store_true", help="export operator-reviewed inspections (required)")
    p.add_argument("--model", help="only this model's inspections")
    p.add_argument("--since", type=datetime.fromisoformat, help="only inspections from this time on (ISO 8601)")
    p.add_argument(
        "--good-split",
        choices=["train", "test"],
        default="train",
        help="reviewed good parts go to train/good (re-fit, default) or test/good (calibrate)",
    )


def run_export(args: argparse.Namespace) -> int:
    from inspector.service.export import export_reviewed

    if not args.reviewed:
        raise UsageError("say which records: --reviewed (operator verdicts are the labels; machine verdicts are not)")
    counts = export_reviewed(args.store_dir, args.out, model=args.model, since=args.since, good_split=args.good_split)
    for folder, n in sorted(counts.items()):
        print(f"{n:6d}  {args.out / folder}")
    print(f"exported {sum(counts.values())} reviewed inspections to {args.out}")
    return 0
