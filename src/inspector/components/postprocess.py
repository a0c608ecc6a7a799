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
