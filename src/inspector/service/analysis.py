"""One image through a model: score, anomaly map and defect regions in original pixels; and the warm-up.

Shared by the inspection path and by loading a model (whose warm-up runs exactly this), and free of the
registry and the store, so both can use it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from inspector.components.regions import Region, find_regions
from inspector.models.scoring import Scorer
from inspector.service.images import decode_upload


@dataclass
class Analysis:
    score: float
    map: np.ndarray
    regions: list[Region]
    timings_ms: dict[str, float]


def analyze(scorer: Scorer, map_threshold: float | None, rgb: np.ndarray, max_regions: int) -> Analysis:
    """Score one image and find its defect regions (at or above `map_threshold`) in original pixels."""
    result = scorer.score([rgb])
    start = time.perf_counter()
    regions = []
    if map_threshold is not None and max_regions > 0:
        full = scorer.preprocessing.map_to_image(result.maps[0], rgb.shape[:2])
        regions = find_regions(full, map_threshold, max_regions)
    timings = dict(result.timings_ms)
    timings["postprocess"] += (time.perf_counter() - start) * 1e3
    return Analysis(float(result.scores[0]), result.maps[0], regions, timings)


def warm_up(scorer: Scorer, map_threshold: float | None, runs: int) -> None:
    """Run the whole inspection path on noise so the first real part is as fast as the thousandth."""
    h, w = scorer.preprocessing.input_size
    rng = np.random.default_rng(0)
    _, png = cv2.imencode(".png", rng.integers(0, 256, (h + 7, w + 5, 3), dtype=np.uint8))
    for _ in range(runs):
        analyze(scorer, map_threshold, decode_upload(png.tobytes(), (h + 7) * (w + 5)).rgb, max_regions=10)
