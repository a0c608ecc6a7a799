"""Fit settings: built-in defaults < a category config (configs/mvtec/<category>.yaml) < command-line flags.

A category config holds shared settings (image size, crop, backbone, layers) at the top level, `model:` naming
the default method, and one section per method (`patchcore:`, `padim:`, `fastflow:`) for its own parameters.
The configs for the 15 MVTec AD categories ship inside the package (inspector/configs/mvtec/).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from inspector.common.errors import InspectorError
from inspector.common.names import DEFAULT_MODEL_KIND
from inspector.models.estimators import ESTIMATORS, AnomalyModel

PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mvtec"


class ConfigError(InspectorError, ValueError):
    """A config file that cannot be read or names unknown settings."""


def config_dirs() -> list[Path]:
    """Where category configs are looked up, first match wins: $INSPECTOR_CONFIG_DIR, ./configs/mvtec, the
    package's own."""
    dirs = [Path(p) for p in os.environ.get("INSPECTOR_CONFIG_DIR", "").split(os.pathsep) if p]
    return [*dirs, Path.cwd() / "configs" / "mvtec", PACKAGE_CONFIGS]


def find_category_config(category: str | None) -> Path | None:
    if not category:
        return None
    for folder in config_dirs():
        candidate = folder / f"{category}.yaml"
        if candidate.is_file():
            return candidate
    return None


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of settings")
    return data


def resolve_fit_settings(
    config: dict[str, Any], model: str | None, overrides: dict[str, Any], settings: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The model kind and its constructor parameters from a config plus flag overrides (None = not given), then
    `settings` (`--set key=value`), taken as given: `--set density_neighbors=null` asks for None."""
    kind = model or config.get("model") or DEFAULT_MODEL_KIND
    if kind not in ESTIMATORS:
        raise ConfigError(f"unknown model '{kind}', choose from {', '.join(ESTIMATORS)}")
    shared = AnomalyModel._param_names()
    params: dict[str, Any] = {k: v for k, v in config.items() if k in shared}
    unknown = set(config) - set(shared) - set(ESTIMATORS) - {"model", "description"}
    if unknown:
        raise ConfigError(f"unknown settings in config: {', '.join(sorted(unknown))}")
    section = config.get(kind) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"config section '{kind}' must be a mapping")
    params.update(section)
    given = {k: v for k, v in overrides.items() if v is not None} | (settings or {})
    if "image_size" in given and "crop_size" not in given and params.get("crop_size") and params.get("image_size"):
        given["crop_size"] = scaled_crop(params["crop_size"], params["image_size"], given["image_size"])
    params.update(given)
    return kind, params


def scaled_crop(crop: int | list[int], config_size: int | list[int], new_size: int | list[int]) -> int | list[int]:
    """A config's crop for another image size: the same fraction of the image (288 of 320 becomes 230 of 256),
    so `--image-size` alone keeps the config's field of view instead of asking for a crop larger than the image."""
    crops, sizes, news = ([v] * 2 if isinstance(v, int) else list(v) for v in (crop, config_size, new_size))
    out = [max(1, round(c * n / s)) for c, s, n in zip(crops, sizes, news, strict=True)]
    return out[0] if isinstance(crop, int) and out[0] == out[1] else out
