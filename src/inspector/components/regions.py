"""Where the defect is: connected areas of an anomaly map above the pixel threshold, as boxes or outlines.

The service sends the boxes to the camera and the PLC; `predict --heatmaps` draws the outlines. Both take the
map in original image pixels, so a region is where the operator sees it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Region:
    """One 8-connected area at or above the threshold: bounding box, pixel count and highest score inside."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float


def defect_mask(amap: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 mask (0/1) of the map's pixels at or above `threshold`."""
    return (amap >= threshold).astype(np.uint8)


def find_regions(amap: np.ndarray, threshold: float, limit: int) -> list[Region]:
    """The map's regions at or above `threshold`, highest peak first, at most `limit`."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(defect_mask(amap, threshold), connectivity=8)
    if n <= 1:
        return []
    peaks = ndimage.maximum(amap, labels, index=np.arange(1, n))
    regions = [
        Region(int(x), int(y), int(w), int(h), int(area), float(peak))
        for (x, y, w, h, area), peak in zip(stats[1:], peaks, strict=True)
    ]
    return sorted(regions, key=lambda r: -r.peak)[:limit]


def outline_regions(picture: np.ndarray, amap: np.ndarray, threshold: float) -> np.ndarray:
    """Draw the outlines of map regions at or above the threshold on an RGB picture of the same size."""
    contours, _ = cv2.findContours(defect_mask(amap, threshold), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.ascontiguousarray(picture).copy()
    cv2.drawContours(out, contours, -1, (255, 255, 255), 2)
    return out
