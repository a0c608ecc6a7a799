"""`inspector drift`: a recipe's drift watch, rebuilt from the inspection store.

It reads the store read-only (it can run beside the service, or on a copy of the store after the fact) and
replays the current model version's inspections through the same monitor, reference and alarm rule the service
uses (service.drift), so it shows what GET /v1/drift and the page's Drift view show when `--since` reaches back
to the service's start. Text, or the page's JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inspector.cli.arguments import Subcommands, UsageError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser(
        "drift",
        help="drift watch of a recipe from the inspection store",
        description="drift watch of a recipe: PSI and KS test of the rolling window against the fit-time "
        "reference, and the alarm, replayed from the inspection store (read-only)",
    )
    p.set_defaults(handler=run_drift)
    p.add_argument("--model-dir", type=Path, required=True, help="the recipe's model directory")
    p.add_argument("--name", help="the recipe's name in the store (default: the model directory's folder name)")
    p.add_argument("--store-dir", type=Path, default=Path("inspections"), help="service store (default %(default)s)")
    p.add_argument("--since", type=since_time, help="how far back: 30m, 8h, 2d, or an ISO 8601 time (default: all)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (the shape of GET /v1/drift)")


def since_time(text: str) -> float:
    """Unix time from `8h`-style ages or an ISO 8601 time (UTC when it has no zone)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        return time.time() - float(match.group(1)) * UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give an age such as 8h, 30m, 2d or an ISO 8601 time") from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def run_drift(args: argparse.Namespace) -> int:
    from inspector.models.persistence import read_manifest
    from inspector.service.drift import replay
    from inspector.service.schemas import RecipeDrift
    from inspector.service.store import DB_FILE, StoreReader

    read_manifest(args.model_dir, verify=False)  # a wrong path fails with the model-dir message
    if not (args.store_dir / DB_FILE).is_file():
        raise UsageError(f"no inspection store at {args.store_dir} (give the service's store.dir with --store-dir)")
    name = args.name or args.model_dir.resolve().name
    snapshot = replay(StoreReader(args.store_dir), name, args.model_dir, args.since)
    if args.json:
        print(json.dumps(RecipeDrift.from_snapshot(snapshot).model_dump(mode="json"), indent=1))
    else:
        print(report_text(snapshot))
    return 0


def report_text(snapshot: dict[str, Any]) -> str:
    """The figures as the page shows them, one statistic a line."""
    stats = snapshot["statistics"]
    seen = max((s["observed"] for s in stats.values()), default=0)
    rule = snapshot["rule"]
    lines = [f"{snapshot['model']} (version {snapshot['model_version']}): {seen} inspections replayed"]
    if snapshot["alarm"]:
        lines.append(f"DRIFT ALARM since {_utc(snapshot['since'])}: {', '.join(snapshot['triggered_by'])}")
    else:
        cleared = f", last cleared {_utc(snapshot['since'])}" if snapshot["since"] else ""
        lines.append(f"no drift alarm (raised {snapshot['alarms_raised']} times{cleared})")
    lines.append(
        f"rule: window {rule['window']}; PSI > {rule['psi_alarm']:g} and KS or rank-sum p < {rule['alpha']:g} on "
        f"{rule['raise_after']} checks in a row raises; {rule['clear_after']} checks without PSI > "
        f"{rule['psi_alarm']:g} and p < {rule['clear_alpha']:g} clear"
    )
    lines.append(f"{'statistic':<11} {'PSI':>7} {'KS p':>9} {'rank p':>9} {'window':>6} {'mean':>10}  reference")
    for name, s in stats.items():
        psi = "-" if s["psi"] is None else f"{s['psi']:.3f}"
        ks = "-" if s["ks_p"] is None else f"{s['ks_p']:.2g}"
        rank = "-" if s["rank_p"] is None else f"{s['rank_p']:.2g}"
        mean = "-" if s["window_mean"] is None else f"{s['window_mean']:.4g}"
        band = s["reference_band"]
        ref = s["reference_source"] + (f", 5/50/95%: {band[0]:.4g} {band[1]:.4g} {band[2]:.4g}" if band else "")
        flag = "  DRIFTING" if s["drifting"] else ""
        row = f"{name:<11} {psi:>7} {ks:>9} {rank:>9} {s['window']:>6} {mean:>10}"
        lines.append(f"{row}  {ref}; {s['status']}{flag}")
    return "\n".join(lines)


def _utc(unix: float | None) -> str:
    return "-" if unix is None else datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
