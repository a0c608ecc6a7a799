"""Score a labelled test set the way the line would (one decoded image at a time) and report the metrics."""

from __future__ import annotations

import csv
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from inspector import metrics
from inspector.calibration.rules import confusion_counts
from inspector.calibration.store import Calibration
from inspector.data import Dataset, read_image, read_mask
from inspector.data.mvtec import Sample
from inspector.models import AnomalyModel


@dataclass
class ImageResult:
    sample: Sample
    score: float
    map_max: float
    map_mean: float
    ms: float


def evaluate(model: AnomalyModel, dataset: Dataset, progress: bool = True) -> tuple[dict[str, Any], list[ImageResult]]:
    """Image and pixel metrics plus the median batch-1 latency from decoded image to score and map."""
    samples = dataset.test()
    if not samples:
        raise ValueError(f"no test images under {dataset.path / 'test'}")
    h, w = model.preprocessing_.input_size
    pixel_eval = dataset.has_masks and any(s.is_defect for s in samples)
    masks = np.zeros((len(samples), h, w), dtype=bool) if pixel_eval else None
    maps = np.zeros((len(samples), h, w), dtype=np.float32) if pixel_eval else None
    has_mask = np.ones(len(samples), dtype=bool)
    results: list[ImageResult] = []
    stages: dict[str, list[float]] = {}
    model.score([read_image(samples[0].path)])  # warm-up: first-call allocations are not the line's latency
    for i, sample in enumerate(tqdm(samples, desc="evaluate", unit="img", disable=not progress, file=sys.stderr)):
        image = read_image(sample.path)
        start = time.perf_counter()
        result = model.score([image])
        elapsed = (time.perf_counter() - start) * 1e3
        for stage, ms in result.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
        amap = result.maps[0]
        results.append(ImageResult(sample, float(result.scores[0]), float(amap.max()), float(amap.mean()), elapsed))
        if pixel_eval:
            maps[i] = amap
            if sample.is_defect and sample.mask_path is None:
                has_mask[i] = False
            elif sample.is_defect:
                masks[i] = _mask_at(model, sample.mask_path, image.shape[:2])
    labels = np.array([s.is_defect for s in samples], dtype=np.int64)
    scores = np.array([r.score for r in results])
    latencies = [r.ms for r in results]
    report: dict[str, Any] = {
        "image_auroc": _or_none(metrics.auroc, labels, scores),
        "pixel_auroc": None,
        "aupro": None,
        "image_f1_max": None,
        "f1_threshold": None,
        "n_train": int(getattr(model, "fit_info_", {}).get("n_images", 0)) or None,
        "n_test": len(samples),
        "n_defect": int(labels.sum()),
        "ms_per_image": round(statistics.median(latencies), 2),
        "ms_p95": round(float(np.percentile(latencies, 95)), 2),
        "ms_stages": {k: round(statistics.median(v), 2) for k, v in stages.items()},
    }
    if labels.any():
        report["image_f1_max"], report["f1_threshold"] = metrics.f1_max(labels, scores)
    if pixel_eval and masks[has_mask].any():
        report["pixel_auroc"] = metrics.pixel_auroc(masks[has_mask], maps[has_mask])
        report["aupro"] = metrics.aupro(masks[has_mask], maps[has_mask], fpr_limit=0.3)
    return report, results


def _mask_at(model: AnomalyModel, mask_path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask brought to the map's grid with the same resize/crop as the image."""
    mask = read_mask(mask_path, image_shape).astype(np.uint8) * 255
    resized = model.preprocessing_.one(np.repeat(mask[..., None], 3, axis=2))[..., 0]
    return resized > 127


def _or_none(fn, *args) -> float | None:
    try:
        return fn(*args)
    except ValueError:  # one class only: the metric is undefined, say null rather than invent a number
        return None


def decision_report(results: list[ImageResult], calibration: Calibration | None) -> dict[str, Any]:
    """Confusion counts, false-reject and escape rate at the active calibration (nulls without one), so the
    report says what the line would have done with these parts, not only how well the scores rank them."""
    if calibration is None:
        return {"calibration": None, "confusion": None, "false_reject_rate": None, "escape_rate": None}
    labels = np.array([r.sample.is_defect for r in results], dtype=bool)
    counts = confusion_counts(labels, np.array([r.score for r in results]), calibration)
    return {
        "calibration": {"name": calibration.name, "rule": calibration.rule,
                        "image_threshold": calibration.image_threshold, "review_band": calibration.review_band},
        "confusion": {k: v for k, v in counts.items() if not k.endswith("_rate")},
        "false_reject_rate": counts["false_reject_rate"],
        "escape_rate": counts["escape_rate"],
    }  # fmt: skip


def write_scores_csv(path: Path, results: list[ImageResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "defect_type", "label", "score", "map_max", "map_mean", "ms"])
        for r in results:
            writer.writerow([r.sample.path, r.sample.defect_type, int(r.sample.is_defect), f"{r.score:.6g}",
                             f"{r.map_max:.6g}", f"{r.map_mean:.6g}", f"{r.ms:.2f}"])  # fmt: skip
