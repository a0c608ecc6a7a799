"""From patch scores to the anomaly map a person looks at: upsample to input size, Gaussian-smooth."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_maps(patch_maps: np.ndarray, size: tuple[int, int], sigma: float = 4.0) -> np.ndarray:
    """(B, h, w) patch scores -> (B, H, W) float32 maps, bilinear upsampling then Gaussian blur."""
    h, w = size
    ksize = 2 * int(4.0 * sigma + 0.5) + 1  # the truncation anomalib and the paper's code use
    out = np.empty((len(patch_maps), h, w), dtype=np.float32)
    for i, patch_map in enumerate(patch_maps):
        up = cv2.resize(patch_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        blur = sigma > 0
        out[i] = cv2.GaussianBlur(up, (ksize, ksize), sigmaX=sigma, borderType=cv2.BORDER_REFLECT) if blur else up
    return out


def top_mean(maps: np.ndarray, fraction: float) -> np.ndarray:
    """(B, H, W) maps -> (B,) mean of each map's highest `fraction` of pixels (at least one pixel: 0 is the peak).

    Exact, and cheaper than partitioning every pixel: the value that ranks `top` in a strided sample is a floor at
    least `top` pixels reach, so only the pixels at or above it are partitioned."""
    pixels = maps.reshape(len(maps), -1)
    n = pixels.shape[1]
    top = max(1, int(n * fraction))
    step = max(1, n // (8 * top))
    out = np.empty(len(pixels), dtype=np.float64)
    for i, row in enumerate(pixels):
        sample = row[::step]
        floor = np.partition(sample, len(sample) - top)[len(sample) - top] if len(sample) > top else sample.min()
        above = row[row >= floor]
        out[i] = np.partition(above, len(above) - top)[-top:].mean(dtype=np.float64)
    return out
