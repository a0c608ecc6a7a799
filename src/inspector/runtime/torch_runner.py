"""The feature network as a torch module: for fitting with `runtime="torch"` and for checking the export."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchRunner:
    """Runs a module under inference mode on CUDA when present, else CPU (torch's threads are set by the caller's
    entry point, not here)."""

    name = "torch"

    def __init__(self, module: nn.Module, device: str = "auto") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
        outputs = out if isinstance(out, (list, tuple)) else [out]
        return [o.float().cpu().numpy() for o in outputs]
