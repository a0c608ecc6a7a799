"""`inspector demo`: the whole loop on generated data, offline — make a category, fit, evaluate, show heatmaps.

Each model is fitted (the fitting half, torch), saved, and then loaded back with `load_scorer` and evaluated
from its directory, so the numbers are those of what the line would run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from inspector.cli.arguments import Subcommands, add_command, training_stack

CATEGORY = "synthetic"
DEMO_MODELS = ("patchcore", "padim")
REPORT_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "n_train", "n_test", "ms_per_image")


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "demo", run, "generate a synthetic category, fit, evaluate and print the metrics (offline)")
    p.add_argument("--workdir", default="runs/demo", help="where data, model and heatmaps go (default %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    return run_demo(Path(args.workdir), progress=not args.quiet)


def run_demo(workdir: Path, progress: bool = True) -> int:
    torch = training_stack()  # first: the imports below need it
    from inspector.common.system import cpu_threads
    from inspector.components.knn import set_search_threads
    from inspector.components.overlay import overlay, write_png
    from inspector.data.io import read_image
    from inspector.data.mvtec import Dataset
    from inspector.data.synthetic import make_category
    from inspector.evaluation.evaluate import evaluate, write_scores_csv
    from inspector.models.estimators import create_model
    from inspector.models.scoring import load_scorer

    torch.set_num_threads(cpu_threads())
    set_search_threads(None)
    start = time.perf_counter()
    data_root = workdir / "data"
    if not (data_root / CATEGORY).is_dir():
        print(f"generating a synthetic category in {data_root / CATEGORY}", file=sys.stderr)
        make_category(data_root, CATEGORY)
    dataset = Dataset(data_root, CATEGORY)
    train_dir = dataset.train_dir
    reports: list[dict[str, Any]] = []
    for kind in DEMO_MODELS:
        model_dir = workdir / "models" / f"{CATEGORY}-{kind}"
        print(f"fitting {kind} on {len(dataset.train())} good images", file=sys.stderr)
        model = create_model(kind, image_size=256).fit(dataset.train(), progress=progress)
        data = {"data_root": str(data_root.resolve()), "category": CATEGORY, "train_dir": str(train_dir.resolve())}
        model.save(model_dir, data=data)  # as `inspector fit` records it, so calibrate can leave training images out
        scorer = load_scorer(model_dir)  # evaluate what was written, as the line will run it
        report, results = evaluate(scorer, dataset, progress=progress)
        write_scores_csv(model_dir / f"scores_{CATEGORY}.csv", results)
        heatmaps = workdir / "heatmaps" / kind
        vmax = max(r.map_max for r in results)
        vmin = min(r.map_mean for r in results)
        first_of_type = {r.sample.defect_type: r for r in reversed(results)}  # one example per defect type
        for r in first_of_type.values():
            image = read_image(r.sample.path)
            amap = scorer.score([image]).maps[0]
            write_png(heatmaps / f"{r.sample.defect_type}_{r.sample.path.stem}.png", overlay(image, amap, vmin, vmax))
        reports.append(
            {
                "model": kind,
                "model_dir": str(model_dir),
                "fit_seconds": scorer.fit_info["seconds"],
                **{k: report[k] for k in REPORT_KEYS},
            }
        )
    print()
    header = f"{'model':<10}{'image AUROC':>13}{'pixel AUROC':>13}{'AUPRO':>8}{'F1 max':>8}{'fit s':>7}{'ms/img':>8}"
    print(header)
    for row in reports:
        print(
            f"{row['model']:<10}{row['image_auroc']:>13.3f}{row['pixel_auroc']:>13.3f}{row['aupro']:>8.3f}"
            f"{row['image_f1_max']:>8.3f}{row['fit_seconds']:>7.1f}{row['ms_per_image']:>8.1f}"
        )
    print(
        f"\nheatmaps in {workdir / 'heatmaps'}; models in {workdir / 'models'}; "
        f"total {time.perf_counter() - start:.0f} s"
    )
    (workdir / "demo_results.json").write_text(json.dumps(reports, indent=2))
    return 0
