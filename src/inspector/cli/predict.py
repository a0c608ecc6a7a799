"""`inspector predict`: score image files, one JSON line each, with optional heatmap overlays (the scoring half:
no torch)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from inspector.cli.arguments import (
    Subcommands,
    active_calibration,
    add_command,
    add_model_dir_arg,
    add_threads_args,
    resolve_model_dir,
)


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "predict", run, "score images; one JSON line each")
    add_model_dir_arg(p)
    p.add_argument("--category", help="shorthand for --model-dir models/<category>")
    p.add_argument("images", nargs="+", type=Path, help="image files")
    p.add_argument("--heatmaps", type=Path, help="write <name>_heatmap.png overlays to this folder")
    add_threads_args(p)


def run(args: argparse.Namespace) -> int:
    from inspector.components.knn import set_search_threads
    from inspector.components.overlay import overlay, write_png
    from inspector.components.regions import outline_regions
    from inspector.data.io import ImageReadError, read_image
    from inspector.models.scoring import load_scorer

    set_search_threads(args.threads)
    model_dir = resolve_model_dir(args)
    scorer = load_scorer(model_dir, threads=args.threads)
    calibration = active_calibration(model_dir)
    rows: list[tuple[Path, Any, Any]] = []
    failures = 0
    for path in args.images:
        try:
            image = read_image(path)
        except ImageReadError as exc:  # one bad file must not cost the rest of the batch
            print(json.dumps({"path": str(path), "error": str(exc)}))
            failures += 1
            continue
        start = time.perf_counter()
        result = scorer.score([image])
        ms = (time.perf_counter() - start) * 1e3
        amap = result.maps[0]
        score = float(result.scores[0])
        line = {
            "path": str(path),
            "score": round(score, 6),
            "normalized_score": round(calibration.normalized(score), 6) if calibration else None,
            "verdict": calibration.verdict(score) if calibration else None,
            "map_max": round(float(amap.max()), 6),
            "map_mean": round(float(amap.mean()), 6),
            "ms": round(ms, 2),
        }
        print(json.dumps(line), flush=True)
        if args.heatmaps:
            rows.append((Path(path), image, amap))
    if args.heatmaps and rows:
        # One colour scale for the whole call, so a hotter-looking image really scored higher.
        vmin = min(float(a.min()) for _, _, a in rows)
        vmax = max(float(a.max()) for _, _, a in rows)
        for path, image, amap in rows:
            full = scorer.preprocessing.map_to_image(amap, image.shape[:2])
            picture = overlay(image, full, vmin, vmax)
            if calibration and calibration.pixel_threshold is not None:  # outline what the calibration calls defect
                picture = outline_regions(picture, full, calibration.pixel_threshold)
            write_png(Path(args.heatmaps) / f"{path.stem}_heatmap.png", picture)
        print(f"wrote {len(rows)} heatmaps to {args.heatmaps} (colour scale {vmin:.3g}..{vmax:.3g})", file=sys.stderr)
    return 1 if failures else 0
