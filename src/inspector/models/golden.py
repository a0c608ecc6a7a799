"""The golden set: a few images kept with a fitted model, with the scores and maps the fitted model gave them.

Fitting keeps it (training images and, where the data has them, test images good and defective) and scores it
with the network as torch built it, before any export. `inspector export` scores the same inputs with the
exported bundle and compares (export.parity), so a bundle that disagrees with the model it came from is never
written. The inputs are stored already resized and cropped to the network's input size, so the comparison
covers the network and the method's state, not a resampler. Imports no torch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

GOLDEN_FILE = "golden.npz"
GOLDEN_TRAIN_IMAGES = 16  # also the images int8 quantisation calibrates on
GOLDEN_TEST_IMAGES = 4  # per role (good, defect), where the data has labelled test images

GoldenRole = Literal["train", "good", "defect"]


@dataclass
class GoldenSet:
    """N images at the network's input size with the fitted model's image scores and anomaly maps for them."""

    names: list[str]
    roles: list[str]
    inputs: np.ndarray  # (N, H, W, 3) uint8
    scores: np.ndarray  # (N,) float64
    maps: np.ndarray  # (N, H, W) float32

    def __len__(self) -> int:
        return len(self.names)

    def batch(self, role: GoldenRole | None = None) -> np.ndarray:
        """The inputs as the network takes them, (B, 3, H, W) float32 in 0..255; one role only if given."""
        chosen = self.inputs if role is None else self.inputs[[r == role for r in self.roles]]
        return np.ascontiguousarray(chosen.transpose(0, 3, 1, 2), dtype=np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            names=np.array(self.names),
            roles=np.array(self.roles),
            inputs=self.inputs,
            scores=self.scores,
            maps=self.maps,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> GoldenSet:
        with np.load(io.BytesIO(data)) as arrays:
            return cls(
                names=[str(n) for n in arrays["names"]],
                roles=[str(r) for r in arrays["roles"]],
                inputs=arrays["inputs"],
                scores=arrays["scores"],
                maps=arrays["maps"],
            )


def spread(items: Sequence[object], count: int) -> list[int]:
    """Indices of up to `count` items spread evenly over the sequence (all of them when there are fewer)."""
    if len(items) <= count:
        return list(range(len(items)))
    return sorted({round(i * (len(items) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
