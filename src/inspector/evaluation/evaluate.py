"""Score a labelled test set the way the line would (one decoded image at a time) and report the metrics."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.common.errors import InspectorError
from inspector.data.mvtec import Dataset, Sample
from inspector.evaluation import metrics
from inspector.evaluation.scoring import score_samples
from inspector.models.scoring import Scorer


@dataclass
class ImageResult:
    sample: Sample
    score: float
    map_max: float
    map_mean: float
    ms: float


def evaluate(scorer: Scorer, dataset: Dataset, progress: bool = True) -> tuple[dict[str, Any], list[ImageResult]]:
    """Image and pixel metrics plus the median batch-1 latency from decoded image to score and map."""
    samples = dataset.test()
    if not samples:
        raise InspectorError(f"no test images under {dataset.path / 'test'}")
    pixel_eval = dataset.has_masks and any(s.is_defect for s in samples)
    scored = score_samples(scorer, samples, keep_maps=pixel_eval, warm_up=True, progress=progress, desc="evaluate")
    results = [
        ImageResult(sample, float(score), float(peak), float(mean), float(ms))
        for sample, score, peak, mean, ms in zip(
            samples, scored.scores, scored.map_max, scored.map_mean, scored.ms, strict=True
        )
    ]
    labels = scored.labels.astype(np.int64)
    latencies = scored.ms.tolist()
    report: dict[str, Any] = {
        "image_auroc": _or_none(metrics.auroc, labels, scored.scores),
        "pixel_auroc": None,
        "aupro": None,
        "image_f1_max": None,
        "f1_threshold": None,
        "n_train": int(scorer.fit_info.get("n_images", 0)) or None,
        "n_test": len(samples),
        "n_defect": int(labels.sum()),
        "ms_per_image": round(statistics.median(latencies), 2),
        "ms_p95": round(float(np.percentile(latencies, 95)), 2),
        "ms_stages": {k: round(statistics.median(v), 2) for k, v in scored.stage_ms.items()},
    }
    if labels.any():
        report["image_f1_max"], report["f1_threshold"] = metrics.f1_max(labels, scored.scores)
    if scored.maps is not None and scored.masks is not None:
        usable = scored.pixel_usable
        if scored.masks[usable].any():
            report["pixel_auroc"] = metrics.pixel_auroc(scored.masks[usable], scored.maps[usable])
            report["aupro"] = metrics.aupro(scored.masks[usable], scored.maps[usable], fpr_limit=0.3)
    return report, results


def _or_none(fn: Callable[..., float], *args: Any) -> float | None:
    try:
        return fn(*args)
    except ValueError:  # one class only: the metric is undefined, say null rather than invent a number
        return None


def write_scores_csv(path: Path, results: list[ImageResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "defect_type", "label", "score", "map_max", "map_mean", "ms"])
        for r in results:
            writer.writerow(
                [
                    r.sample.path,
                    r.sample.defect_type,
                    int(r.sample.is_defect),
                    f"{r.score:.6g}",
                    f"{r.map_max:.6g}",
                    f"{r.map_mean:.6g}",
                    f"{r.ms:.2f}",
                ]
            )
