"""The one loop that scores labelled images for evaluate and calibrate: decode, score, keep what is asked.

Maps and masks are kept at the network's input size; a mask goes through the same resize and crop as its image,
so a pixel of the mask and a pixel of the map are the same place on the part.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspector.common.progress import progress_bar
from inspector.data.io import read_image, read_mask
from inspector.data.mvtec import Sample
from inspector.features.preprocess import Preprocessing
from inspector.models.scoring import Scorer


@dataclass
class Scored:
    """Scores of some images; maps (and masks, where defects have them) at the network's input size."""

    samples: list[Sample]
    scores: np.ndarray
    maps: np.ndarray | None = None
    masks: np.ndarray | None = None
    map_max: np.ndarray = field(default_factory=lambda: np.empty(0))
    map_mean: np.ndarray = field(default_factory=lambda: np.empty(0))
    ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.is_defect for s in self.samples], dtype=bool)

    @property
    def pixel_usable(self) -> np.ndarray:
        """Images whose pixels have a known label: good ones, and defective ones with a mask."""
        return ~self.labels | np.array([s.mask_path is not None for s in self.samples], dtype=bool)


def mask_at(preprocessing: Preprocessing, mask_path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask brought to the map's grid with the same resize/crop as the image."""
    mask = read_mask(mask_path, image_shape).astype(np.uint8) * 255
    resized = preprocessing.one(np.repeat(mask[..., None], 3, axis=2))[..., 0]
    return resized > 127


def score_samples(
    scorer: Scorer,
    samples: list[Sample],
    batch_size: int = 1,
    keep_maps: bool = True,
    warm_up: bool = False,
    progress: bool = True,
    desc: str = "score",
) -> Scored:
    """Score `samples` in batches of `batch_size`; `ms` is each image's share of its batch's scoring time
    (decoded image to score and map). `warm_up` scores the first image once untimed, as the line's first part
    pays first-call allocations no later part does."""
    n = len(samples)
    h, w = scorer.preprocessing.input_size
    scores = np.empty(n, dtype=np.float64)
    map_max = np.empty(n, dtype=np.float64)
    map_mean = np.empty(n, dtype=np.float64)
    ms = np.empty(n, dtype=np.float64)
    maps = np.empty((n, h, w), dtype=np.float32) if keep_maps else None
    has_masks = keep_maps and any(s.mask_path is not None for s in samples)
    masks = np.zeros((n, h, w), dtype=bool) if has_masks else None
    stage_ms: dict[str, list[float]] = {}
    if warm_up and samples:
        scorer.score([read_image(samples[0].path)])
    bar = progress_bar(total=n, desc=desc, unit="img", disable=not progress)
    for start in range(0, n, batch_size):
        chunk = samples[start : start + batch_size]
        images = [read_image(s.path) for s in chunk]
        began = time.perf_counter()
        result = scorer.score(images)
        elapsed_ms = (time.perf_counter() - began) * 1e3
        rows = slice(start, start + len(chunk))
        scores[rows] = result.scores
        map_max[rows] = result.maps.reshape(len(chunk), -1).max(axis=1)
        map_mean[rows] = result.maps.reshape(len(chunk), -1).mean(axis=1)
        ms[rows] = elapsed_ms / len(chunk)
        for stage, stage_time in result.timings_ms.items():
            stage_ms.setdefault(stage, []).append(stage_time / len(chunk))
        if maps is not None:
            maps[rows] = result.maps
        if masks is not None:
            for i, (sample, image) in enumerate(zip(chunk, images, strict=True)):
                if sample.mask_path is not None:
                    masks[start + i] = mask_at(scorer.preprocessing, sample.mask_path, image.shape[:2])
        bar.update(len(chunk))
    bar.close()
    return Scored(samples, scores, maps, masks, map_max, map_mean, ms, stage_ms)
