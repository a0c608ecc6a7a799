"""`inspector data download|synthetic`: get data sets (one MVTec AD category, or a generated one)."""

from __future__ import annotations

import argparse
from pathlib import Path

from inspector.cli.arguments import Subcommands, add_data_args, help_handler


def add_parser(sub: Subcommands) -> None:
    data = sub.add_parser("data", help="get data sets", description="get data sets")
    data.set_defaults(handler=help_handler(data))  # without an action: print this group's help
    actions = data.add_subparsers(title="data commands", metavar="ACTION")

    p = actions.add_parser("download", help="download one MVTec AD category (needs internet)")
    p.set_defaults(handler=run_download)
    p.add_argument("dataset", choices=["mvtec"])
    add_data_args(p, category_required=True)
    p.add_argument("--url", help="archive URL (default: the official one, or $INSPECTOR_MVTEC_URL)")
    p.add_argument("--sha256", help="expected archive checksum")
    p.add_argument("-q", "--quiet", action="store_true")

    p = actions.add_parser("synthetic", help="generate a synthetic MVTec-style category (offline)")
    p.set_defaults(handler=run_synthetic)
    add_data_args(p)
    p.set_defaults(category="synthetic")
    p.add_argument("--seed", type=int, default=0)


def run_download(args: argparse.Namespace) -> int:
    from inspector.data.download import download_category

    path = download_category(
        args.category, Path(args.data_root), url=args.url, sha256=args.sha256, progress=not args.quiet
    )
    print(f"{args.category} ready at {path}")
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from inspector.data.synthetic import make_category

    path = make_category(Path(args.data_root), args.category, seed=args.seed)
    print(f"synthetic category written to {path}")
    return 0
