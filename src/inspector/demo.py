"""`inspector demo`: the whole loop on generated data, offline — make a category, fit, evaluate, show heatmaps."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from inspector.data import Dataset, read_image
from inspector.data.synthetic import make_category
from inspector.evaluate import evaluate, write_scores_csv
from inspector.models import create_model
from inspector.visualize import overlay, write_png

CATEGORY = "synthetic"
DEMO_MODELS = ("patchcore", "padim")


def run_demo(workdir: Path, progress: bool = True) -> int:
    start = time.perf_counter()
    data_root = workdir / "data"
    if not (data_root / CATEGORY).is_dir():
        print(f"generating a synthetic category in {data_root / CATEGORY}", file=sys.stderr)
        make_category(data_root, CATEGORY)
    dataset = Dataset(data_root, CATEGORY)
    reports = []
    for kind in DEMO_MODELS:
        model_dir = workdir / "models" / f"{CATEGORY}-{kind}"
        print(f"fitting {kind} on {len(dataset.train())} good images", file=sys.stderr)
        model = create_model(kind, image_size=256).fit(dataset.train(), progress=progress)
        model.save(model_dir, data={"data_root": str(data_root.resolve()), "category": CATEGORY})
        report, results = evaluate(model, dataset, progress=progress)
        write_scores_csv(model_dir / f"scores_{CATEGORY}.csv", results)
        heatmaps = workdir / "heatmaps" / kind
        vmax = max(r.map_max for r in results)
        vmin = min(r.map_mean for r in results)
        first_of_type = {r.sample.defect_type: r for r in reversed(results)}  # one example per defect type
        for r in first_of_type.values():
            image = read_image(r.sample.path)
            amap = model.score([image]).maps[0]
            write_png(heatmaps / f"{r.sample.defect_type}_{r.sample.path.stem}.png", overlay(image, amap, vmin, vmax))
        reports.append({"model": kind, "model_dir": str(model_dir), "fit_seconds": model.fit_info_["seconds"],
                        **{k: report[k] for k in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max",
                                                  "n_train", "n_test", "ms_per_image")}})  # fmt: skip
    print()
    header = f"{'model':<10}{'image AUROC':>13}{'pixel AUROC':>13}{'AUPRO':>8}{'F1 max':>8}{'fit s':>7}{'ms/img':>8}"
    print(header)
    for r in reports:
        print(f"{r['model']:<10}{r['image_auroc']:>13.3f}{r['pixel_auroc']:>13.3f}{r['aupro']:>8.3f}"
              f"{r['image_f1_max']:>8.3f}{r['fit_seconds']:>7.1f}{r['ms_per_image']:>8.1f}")  # fmt: skip
    print(f"\nheatmaps in {workdir / 'heatmaps'}; models in {workdir / 'models'}; "
          f"total {time.perf_counter() - start:.0f} s")  # fmt: skip
    (workdir / "demo_results.json").write_text(json.dumps(reports, indent=2))
    return 0
