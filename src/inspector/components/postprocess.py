"""From patch scores to the anomaly map a person looks at: upsample to input size, Gaussian-smooth."""

from __future__ import annotations

import functools

import cv2
import numpy as np


def smooth_maps(patch_maps: np.ndarray, size: tuple[int, int], sigma: float = 4.0) -> np.ndarray:
    """(B, h, w) patch scores -> (B, H, W) float32 maps, bilinear upsampling then Gaussian blur.

    Both steps are linear and act on rows and columns separately, so together they are one (H, h) matrix applied to
    the columns and one (W, w) to the rows: two small matrix products give `upsample_and_blur`'s maps to float32
    rounding at a fraction of a 41-tap blur over every pixel (docs/benchmarks.md)."""
    shape = (int(patch_maps.shape[1]), int(patch_maps.shape[2]))
    rows, columns = smoothing_matrices(shape, (int(size[0]), int(size[1])), float(sigma))
    out = np.empty((len(patch_maps), *size), dtype=np.float32)
    for i, patch_map in enumerate(patch_maps):
        tall = cv2.gemm(rows, patch_map.astype(np.float32), 1.0, None, 0.0)
        out[i] = cv2.gemm(tall, columns, 1.0, None, 0.0, flags=cv2.GEMM_2_T)
    return out


def upsample_and_blur(patch_map: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """One (h, w) map -> (H, W): bilinear upsampling, then a Gaussian blur truncated at 4 sigma with reflected
    borders (what anomalib and the paper's code do). The definition `smooth_maps` computes faster."""
    h, w = size
    up = cv2.resize(patch_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if sigma <= 0:
        return up
    ksize = 2 * int(4.0 * sigma + 0.5) + 1
    return cv2.GaussianBlur(up, (ksize, ksize), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


@functools.lru_cache(maxsize=16)
def smoothing_matrices(shape: tuple[int, int], size: tuple[int, int], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The (H, h) and (W, w) matrices of `upsample_and_blur` for (h, w) maps: a map of ones on one row (column)
    comes out as that row's (column's) matrix column in every output column (row), since smoothing keeps ones."""
    h, w = shape
    rows = np.empty((size[0], h), dtype=np.float32)
    columns = np.empty((size[1], w), dtype=np.float32)
    for i in range(h):
        impulse = np.zeros(shape, dtype=np.float32)
        impulse[i, :] = 1.0
        rows[:, i] = upsample_and_blur(impulse, size, sigma)[:, 0]
    for j in range(w):
        impulse = np.zeros(shape, dtype=np.float32)
        impulse[:, j] = 1.0
        columns[:, j] = upsample_and_blur(impulse, size, sigma)[0, :]
    rows.setflags(write=False)  # shared by every caller through the cache
    columns.setflags(write=False)
    return rows, columns


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
