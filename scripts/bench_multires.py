"""Multi-resolution PatchCore scoring: one model per input size, their anomaly maps averaged.

Issue 14 asks whether scoring an image at more than one resolution lifts accuracy across data sets. Each data
set gets one PatchCore per size in `--sizes` (the defaults otherwise: lite0, stages 2+3, 1% coreset, the bank's
spacing, sigma 5); each scores every test image through its fitted scorer, as the line would. A model's maps are
divided by its bank's mean spacing (the mean distance from each entry to its `density_neighbors` = 3 nearest
others), so maps from different sizes are in the same unit, then resized to 256x256 and averaged; the image score
is the mean of the averaged map's highest 1% of pixels, as the default reads one map. Rows: each size alone, then
the combinations.
The cost of a combination is the sum of its models' median ms per image (they run one after the other).

Data as `bench_image_score.py` (magnetic_tile with pixel AUROC against its masks; ELPV mono and poly cells, 250
training cells each, drawn with seed 0). Run (`pip install -e ".[bench]"` brings elpv-dataset):

    python scripts/bench_multires.py --json /tmp/bench_multires.json
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from _bench_common import DEFAULT_DATA_ROOT, report_rows, set_up_fit_process
from bench_image_score import SIZE, elpv, magnetic_tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 320, 192], help="the first is the base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    set_up_fit_process(args.threads)
    import cv2

    from inspector.components.knn import bank_spacing
    from inspector.components.postprocess import top_mean
    from inspector.evaluation.metrics import auroc, pixel_auroc
    from inspector.models.estimators import create_model

    base, *others = args.sizes
    combos = [(size,) for size in args.sizes]
    combos += [(base, *extra) for n in range(1, len(others) + 1) for extra in itertools.combinations(others, n)]
    rows: dict[str, dict[str, object]] = {}
    for name, train, test, labels, masks in [*magnetic_tile(args.data_root, None), *elpv(0)]:
        maps: dict[int, np.ndarray] = {}
        ms: dict[int, float] = {}
        for size in args.sizes:
            model = create_model("patchcore", threads=args.threads, seed=0, image_size=size).fit(train, progress=False)
            scale = float(bank_spacing(model.memory_bank_, model.density_neighbors).mean())
            out, times = [], []
            for image in test:
                start = time.perf_counter()
                result = model.score([image])
                times.append(time.perf_counter() - start)
                out.append(cv2.resize(result.maps[0], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) / scale)
            maps[size], ms[size] = np.stack(out), float(np.median(times) * 1e3)
            print(f"{name}: {size} px fitted and scored ({ms[size]:.1f} ms/img)", flush=True)
        for combo in combos:
            label = " + ".join(f"{size} px" for size in combo)
            averaged = np.mean([maps[size] for size in combo], axis=0)
            row = rows.setdefault(label, {"sizes": label})
            row[f"{name} image"] = round(auroc(labels, top_mean(averaged, 0.01)), 4)
            if masks is not None:
                row[f"{name} pixel"] = round(pixel_auroc(masks, averaged), 4)
            row[f"{name} ms/img"] = round(sum(ms[size] for size in combo), 1)
            print(label, {k: v for k, v in row.items() if k.startswith(name)}, flush=True)
    report_rows(list(rows.values()), args.json, args.threads)


if __name__ == "__main__":
    main()
