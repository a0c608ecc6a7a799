"""How PatchCore should read scores off its patch distances: the paper's max patch distance, its re-weighted
max, or the smoothed anomaly map (its peak, or the mean of its highest pixels), each with the bare distance or the
distance divided by the nearest bank entry's relative spacing (`density_neighbors`)?

Each data set gets one fit (PatchCore defaults with `density_neighbors=None`; the spacing does not change the
bank); its network runs once per test image, then every reading in `READINGS` scores the same outputs through
the fitted scorer, so the rows differ only in how the score is read. Three real data sets, so the choice is not
tuned to one:

* Magnetic-Tile defects (Huang et al., 2018), `../shared/datasets/magnetic_tile` (MVTec layout): train/good
  for fitting, all of test/ for scoring; pixel AUROC against its masks for the readings that change the map.
* ELPV solar cells (Buerhop-Lutz et al., 2018; Deitsch et al., 2019), the PyPI package `elpv-dataset`
  (CC BY-NC-SA 4.0: used here as a benchmark only, never shipped): 300x300 electroluminescence images with a
  defect probability per cell. Per cell type (mono, poly), 250 randomly drawn cells with probability 0 are the
  training set; the remaining probability-0 cells (good) and all probability-1 cells (defective) are the test set.

All models: PatchCore defaults otherwise (tf_efficientnet_lite0 with offline weights, stages 2+3, 256 px, 1%
coreset), 2 threads. Run (`pip install -e ".[bench]"` brings elpv-dataset; the magnetic_tile fit takes most of
the time, see docs/benchmarks.md):

    python scripts/bench_image_score.py --seeds 0 --json /tmp/bench_image_score.json
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from _bench_common import (
    DEFAULT_DATA_ROOT,
    list_dataset,
    load_masks,
    report_rows,
    set_up_fit_process,
)

ELPV_TRAIN = 250
SIZE = 256  # the masks' size: the maps' (PatchCore's default input size)
# A reading: (image_score, density_neighbors, map_top_fraction); the fraction only counts for "map".
Reading = tuple[str, int | None, float]
READINGS: list[Reading] = [
    ("patch", None, 0.0),
    ("reweighted", None, 0.0),
    *[("map", k, fraction) for k in (None, 1, 3, 9) for fraction in (0.0, 0.01, 0.05)],
]


def reading_name(reading: Reading) -> str:
    score, k, fraction = reading
    spacing = "bare distance" if k is None else f"spacing k={k}"
    if score != "map":
        return f"{score}, {spacing}"
    return f"map {'peak' if fraction == 0 else f'top {fraction:.0%}'}, {spacing}"


DataSet = tuple[str, list, list, np.ndarray, np.ndarray | None]


def magnetic_tile(data_root: Path, limit_train: int | None) -> Iterator[DataSet]:
    from inspector.data import read_image

    train, test = list_dataset(data_root, "magnetic_tile", limit_train, None)
    labels = np.array([s.is_defect for s in test], dtype=int)
    yield "magnetic_tile", train, [read_image(s.path) for s in test], labels, load_masks(test, (SIZE, SIZE))


def elpv(seed: int) -> Iterator[DataSet]:
    from elpv_dataset.utils import load_dataset

    images, probability, cell_type = load_dataset()
    rgb = [np.repeat(image[:, :, None], 3, axis=2) for image in images]  # the cells are 8-bit grey
    rng = np.random.default_rng(seed)
    for kind in ("mono", "poly"):
        good = rng.permutation(np.flatnonzero((probability == 0) & (cell_type == kind)))
        defective = np.flatnonzero((probability == 1) & (cell_type == kind))
        test = np.concatenate([good[ELPV_TRAIN:], defective])
        labels = np.r_[np.zeros(len(good) - ELPV_TRAIN), np.ones(len(defective))].astype(int)
        yield f"elpv {kind}", [rgb[i] for i in good[:ELPV_TRAIN]], [rgb[i] for i in test], labels, None


def read_all(scorer: Any, outputs: list[list[np.ndarray]], reading: Reading) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and maps of every test image under one reading, from the network outputs computed once."""
    from inspector.components.knn import relative_spacing
    from inspector.components.postprocess import smooth_maps

    score, k, fraction = reading
    scorer.image_score, scorer.map_top_fraction = score, fraction
    scorer.spacing = None if k is None else relative_spacing(scorer.memory_bank, k)
    scores, maps = [], []
    for output in outputs:
        patch_scores, patch_maps = scorer._patch_scores(output)
        image_maps = smooth_maps(patch_maps, scorer.preprocessing.input_size, scorer.blur_sigma)
        scores.append(scorer._image_scores(patch_scores, image_maps))
        maps.append(image_maps)
    return np.concatenate(scores), np.concatenate(maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--limit-train", type=int, help="magnetic_tile: use every k-th training image to keep N")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    set_up_fit_process(args.threads)  # torch and FAISS; `threads=` below is onnxruntime's
    from inspector.evaluation.metrics import auroc, pixel_auroc
    from inspector.models.estimators import create_model

    rows: dict[str, dict[str, Any]] = {reading_name(r): {"reading": reading_name(r)} for r in READINGS}
    for seed in args.seeds:
        for name, train, test, labels, masks in [*magnetic_tile(args.data_root, args.limit_train), *elpv(seed)]:
            model = create_model("patchcore", threads=args.threads, seed=seed, density_neighbors=None)
            model.fit(train, progress=False)
            scorer = model.scorer_  # the fitted model scores through it, as a loaded model would
            outputs = [scorer.runner(scorer.preprocessing([image])) for image in test]
            column = f"{name} (seed {seed}, {len(train)} train, {int((labels == 0).sum())}/{int(labels.sum())})"
            for reading in READINGS:
                scores, maps = read_all(scorer, outputs, reading)
                row = rows[reading_name(reading)]
                row[column] = round(auroc(labels, scores), 4)
                if masks is not None:
                    row[f"{name} pixel"] = "" if reading[0] != "map" else round(pixel_auroc(masks, maps), 4)
                print(reading_name(reading), column, row[column], flush=True)
    report_rows(list(rows.values()), args.json, args.threads)


if __name__ == "__main__":
    main()
