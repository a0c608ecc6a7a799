"""The scoring network as torch builds it: normalisation, frozen backbone stages and a method's head, one graph.

Exported once to ONNX at fit time (runtime.export); the line box runs that export and never this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    """0..255 RGB -> the backbone's normalised input; part of the network so exports carry it."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Network(nn.Module):
    """Normalisation, frozen backbone stages and the model's head, as one graph to run or export."""

    def __init__(self, normalize: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> Any:
        return self.head(self.backbone(self.normalize(x)))


def align_stages(stages: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Backbone stage maps brought to the finest (first) stage's grid by bilinear resizing, as all three heads
    combine them; the finest stage is passed through untouched."""
    size = stages[0].shape[-2:]
    return [stages[0]] + [F.interpolate(s, size=size, mode="bilinear", align_corners=False) for s in stages[1:]]
