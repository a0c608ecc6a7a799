"""Pictures a person reads faster than numbers: the anomaly map laid over the part."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def colorize(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map scores to an RGB heat colour scale; values at or below `vmin` are dark blue, at `vmax` red."""
    span = max(vmax - vmin, 1e-12)
    scaled = np.clip((amap - vmin) / span, 0.0, 1.0)
    colored = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float, alpha: float = 0.45) -> np.ndarray:
    """Blend the coloured map (same HxW as `image`) over the RGB image; below `vmin` the part shows through."""
    heat = colorize(amap, vmin, vmax)
    weight = alpha * np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.15, 1.0)[..., None]
    return (image * (1.0 - weight) + heat * weight).astype(np.uint8)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode {path}")
    path.write_bytes(buf.tobytes())
