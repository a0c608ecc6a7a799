"""Which PatchCore image score separates good from defective parts best: the paper's max patch distance, its
re-weighted max, or the peak of the smoothed anomaly map (inspector's default)?

Each fitted model scores the test images three times, once per `image_score`; the fit, the memory bank and the
maps are shared, so the rows differ only in how the image score is read off the patch distances. Two real
datasets, so the choice is not tuned to one:

* Magnetic-Tile defects (Huang et al., 2018), `../shared/datasets/magnetic_tile` (MVTec layout): train/good
  for fitting, all of test/ for scoring (pixel masks exist, but only the image score changes here).
* ELPV solar cells (Buerhop-Lutz et al., 2018; Deitsch et al., 2019), the PyPI package `elpv-dataset`
  (CC BY-NC-SA 4.0: used here as a benchmark only, never shipped): 300x300 electroluminescence images with a
  defect probability per cell. Per cell type (mono, poly), 250 randomly drawn cells with probability 0 are the
  training set; the remaining probability-0 cells (good) and all probability-1 cells (defective) are the test set.

All models: PatchCore defaults (tf_efficientnet_lite0 with offline weights, stages 2+3, 256 px, 1% coreset),
2 threads. Run (`pip install -e ".[bench]"` brings elpv-dataset; the magnetic_tile fit takes most of the time,
see docs/benchmarks.md):

    python scripts/bench_image_score.py --seeds 0 1 --json /tmp/bench_image_score.json
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from _bench_common import DEFAULT_DATA_ROOT, list_dataset, machine_info, markdown_table, set_up_fit_process, write_json

SCORES = ("patch", "reweighted", "map")
ELPV_TRAIN = 250


def magnetic_tile(data_root: Path, limit_train: int | None) -> Iterator[tuple[str, list, list, np.ndarray]]:
    from inspector.data import read_image

    train, test = list_dataset(data_root, "magnetic_tile", limit_train, None)
    labels = np.array([s.is_defect for s in test], dtype=int)
    yield "magnetic_tile", train, [read_image(s.path) for s in test], labels


def elpv(seed: int) -> Iterator[tuple[str, list, list, np.ndarray]]:
    from elpv_dataset.utils import load_dataset

    images, probability, cell_type = load_dataset()
    rgb = [np.repeat(image[:, :, None], 3, axis=2) for image in images]  # the cells are 8-bit grey
    rng = np.random.default_rng(seed)
    for kind in ("mono", "poly"):
        good = rng.permutation(np.flatnonzero((probability == 0) & (cell_type == kind)))
        defective = np.flatnonzero((probability == 1) & (cell_type == kind))
        test = np.concatenate([good[ELPV_TRAIN:], defective])
        labels = np.r_[np.zeros(len(good) - ELPV_TRAIN), np.ones(len(defective))].astype(int)
        yield f"elpv {kind}", [rgb[i] for i in good[:ELPV_TRAIN]], [rgb[i] for i in test], labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--limit-train", type=int, help="magnetic_tile: use every k-th training image to keep N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    set_up_fit_process(args.threads)  # torch and FAISS; `threads=` below is onnxruntime's
    from inspector.evaluation.metrics import auroc
    from inspector.models.estimators import create_model

    rows = []
    for seed in args.seeds:
        for name, train, test, labels in [*magnetic_tile(args.data_root, args.limit_train), *elpv(seed)]:
            model = create_model("patchcore", threads=args.threads, seed=seed).fit(train, progress=False)
            row = {
                "data": name,
                "seed": seed,
                "train": len(train),
                "good": int((labels == 0).sum()),
                "defective": int(labels.sum()),
            }
            for score in SCORES:
                model.scorer_.image_score = score  # the fitted model scores through its scorer
                values = np.concatenate([model.score([image]).scores for image in test])
                row[score] = round(auroc(labels, values), 4)
            print(row, flush=True)
            rows.append(row)
    print(markdown_table(list(rows[0]), [list(row.values()) for row in rows]))
    if args.json:
        write_json(args.json, {"machine": machine_info(), "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
