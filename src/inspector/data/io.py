"""Decode any image OpenCV reads into the one form the models take: RGB uint8, HxWx3.

Line cameras deliver 8- or 16-bit gray, RGB or RGBA in PNG, JPEG, BMP or TIFF; everything downstream
(fit, scoring, the service) sees the same normalised array, so no caller handles formats itself.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from inspector.common.errors import InspectorError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


class ImageReadError(InspectorError, ValueError):
    """An image (or mask) that cannot be decoded; the message names its source."""


def decode_image(data: bytes | np.ndarray, source: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (HxWx3)."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise ImageReadError(f"{source}: empty file")
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{source}: not a readable image (corrupt, truncated or unsupported format)")
    return to_rgb8(img, source)


def to_rgb8(img: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Bring an OpenCV-decoded array (gray/BGR/BGRA, 8/16-bit or float) to RGB uint8."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ImageReadError(f"{source}: unsupported image shape {img.shape}")
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise ImageReadError(f"{source}: image too small ({img.shape[1]}x{img.shape[0]})")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageReadError(f"{source}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8; `ImageReadError` names the file when it cannot."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # unlike cv2.imread, copes with non-ASCII paths
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    return decode_image(data, str(path))


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool (pixel > 127), optionally checked against the image's HxW."""
    path = Path(path)
    gray = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if gray is None:
        raise ImageReadError(f"{path}: mask missing or not a readable image")
    if shape is not None and gray.shape != tuple(shape):
        gray = cv2.resize(gray, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return gray > 127
