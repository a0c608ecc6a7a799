"""Image preprocessing shared by fit, scoring and the service: resize, optional centre crop, batch.

The network itself normalises (mean/std live inside the exported graph), so the only thing that crosses into
the runtime is a float32 NCHW batch in 0..255 — the same for torch and onnxruntime. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class Preprocessing:
    """Resize every image to `image_size` (H, W), then optionally centre-crop to `crop_size`."""

    image_size: tuple[int, int]
    crop_size: tuple[int, int] | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the tensor the network sees, and of the anomaly maps."""
        return self.crop_size or self.image_size

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images of any sizes -> float32 batch (B, 3, H, W) in 0..255."""
        h, w = self.input_size
        batch = np.empty((len(images), 3, h, w), dtype=np.float32)
        for i, image in enumerate(images):
            batch[i] = self.one(image).transpose(2, 0, 1)
        return batch

    def one(self, image: np.ndarray) -> np.ndarray:
        """One RGB uint8 image -> HxWx3 uint8 at the network's input size."""
        h, w = self.image_size
        if image.shape[:2] != (h, w):
            image = resize(image, h, w)
        if self.crop_size is not None:
            ch, cw = self.crop_size
            top, left = (h - ch) // 2, (w - cw) // 2
            image = image[top : top + ch, left : left + cw]
        return image

    def map_to_image(self, amap: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
        """Bring a map at input size back onto the original image's pixels (cropped-away border = 0)."""
        if self.crop_size is not None:
            h, w = self.image_size
            ch, cw = self.crop_size
            top, left = (h - ch) // 2, (w - cw) // 2
            full = np.zeros((h, w), dtype=amap.dtype)
            full[top : top + ch, left : left + cw] = amap
            amap = full
        return cv2.resize(amap, (image_shape[1], image_shape[0]), interpolation=cv2.INTER_LINEAR)

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "crop_size": list(self.crop_size) if self.crop_size else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """The inverse of `to_dict`, as manifests and inspection records store it."""
        image_size = as_size(data["image_size"])
        if image_size is None:
            raise ValueError("preprocessing needs an image_size")
        return cls(image_size, as_size(data.get("crop_size")))


def resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Area averaging to shrink (bilinear to enlarge), uint8 in and out.

    OpenCV's area resize of uint8 by a fractional factor in both axes is several times slower than the same
    resize of float32 (docs/benchmarks.md, "Scoring cost"), and rounding the float result gives the very same
    pixels, so that case goes through float32. Whole factors keep OpenCV's fast uint8 path, and a resize that
    enlarges either axis its uint8 interpolation, whose fixed-point rounding float would not reproduce.
    """
    in_h, in_w = image.shape[:2]
    if in_h >= h and in_w >= w and (in_h % h or in_w % w):
        shrunk = cv2.resize(image.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        return np.rint(shrunk, out=shrunk).astype(np.uint8)
    shrink = in_h > h or in_w > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def as_size(value: int | Sequence[int] | None) -> tuple[int, int] | None:
    """Accept 256 or (256, 320) from configs and flags."""
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    h, w = (int(v) for v in value)
    return (h, w)
