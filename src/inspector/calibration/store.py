"""Calibrations live beside a model's scoring state, never inside it: changing one needs no re-fit or re-export.

    <model_dir>/calibrations/<name>.json   every calibration made for this model
    <model_dir>/calibration.json           the active one (a copy, replaced atomically)

A calibration remembers the model it was made for (the manifest's checksum), so one left over from an
earlier fit is recognised as stale instead of silently applied to a different model.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from inspector.modeldir import write_atomic

ACTIVE_FILE = "calibration.json"
ARCHIVE_DIR = "calibrations"
Verdict = Literal["pass", "review", "fail"]


class CalibrationError(ValueError):
    """A calibration that is missing, damaged or does not belong to the model."""


@dataclass
class Calibration:
    """Thresholds and what they are expected to do on the line.

    `review_band` is in normalised units (multiples of the image threshold): scores inside [low, high] go to a
    person, below `low` pass, above `high` fail. Without a band, normalised score >= 1.0 fails.
    """

    image_threshold: float
    rule: str
    name: str = ""
    pixel_threshold: float | None = None
    review_band: tuple[float, float] | None = None
    targets: dict[str, float] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    model_fingerprint: str = ""
    created: str = ""
    pixel_rule: str = ""  # how pixel_threshold was chosen (masks or good-image map statistics)

    def __post_init__(self) -> None:
        if not (self.image_threshold > 0 and self.image_threshold < float("inf")):
            raise CalibrationError(f"image threshold must be a positive number, got {self.image_threshold}")
        if self.review_band is not None:
            low, high = (float(v) for v in self.review_band)
            if not 0 < low <= 1.0 <= high:
                raise CalibrationError(f"review band must satisfy 0 < low <= 1 <= high, got {low}:{high}")
            self.review_band = (low, high)
        if not self.created:
            self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if not self.name:
            stamp = re.sub(r"[^0-9T]", "", self.created)[:15]
            self.name = f"{self.rule}-{stamp}"

    def normalized(self, score: float) -> float:
        """The score as a multiple of the threshold: 1.0 is exactly at the threshold."""
        return float(score) / self.image_threshold

    def verdict(self, score: float) -> Verdict:
        n = self.normalized(score)
        if self.review_band is not None:
            low, high = self.review_band
            return "pass" if n < low else "fail" if n > high else "review"
        return "fail" if n >= 1.0 else "pass"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["review_band"] = list(self.review_band) if self.review_band else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("review_band") is not None:
            known["review_band"] = tuple(known["review_band"])
        return cls(**known)


def model_fingerprint(model_dir: Path) -> str:
    """Checksum of the model's manifest: changes whenever the model is re-fitted."""
    manifest = Path(model_dir) / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else ""


def save_calibration(model_dir: Path, calibration: Calibration, activate: bool = True) -> Path:
    """Archive the calibration under its name and, by default, make it the active one."""
    model_dir = Path(model_dir)
    if not calibration.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", calibration.name):
        raise CalibrationError(f"calibration name must be letters, digits, '.', '_' or '-': {calibration.name!r}")
    calibration.model_fingerprint = calibration.model_fingerprint or model_fingerprint(model_dir)
    data = json.dumps(calibration.to_dict(), indent=2).encode()
    archived = model_dir / ARCHIVE_DIR / f"{calibration.name}.json"
    archived.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(archived, data)
    if activate:
        write_atomic(model_dir / ACTIVE_FILE, data)
    return archived


def list_calibrations(model_dir: Path) -> list[Calibration]:
    """Every archived calibration of the model, oldest first."""
    folder = Path(model_dir) / ARCHIVE_DIR
    found = [_read(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return sorted(found, key=lambda c: c.created)


def load_active_calibration(model_dir: Path, allow_stale: bool = False) -> Calibration | None:
    """The active calibration, or None when the model has none. A stale one (made for an earlier fit of this
    directory) raises unless `allow_stale`."""
    path = Path(model_dir) / ACTIVE_FILE
    if not path.is_file():
        return None
    calibration = _read(path)
    current = model_fingerprint(Path(model_dir))
    if not allow_stale and calibration.model_fingerprint and current and calibration.model_fingerprint != current:
        raise CalibrationError(f"{path} was made for an earlier fit of this model; run `inspector calibrate` again")
    return calibration


def activate_calibration(model_dir: Path, name: str) -> Calibration:
    """Make an archived calibration the active one (no re-fit, no re-export)."""
    path = Path(model_dir) / ARCHIVE_DIR / f"{name}.json"
    if not path.is_file():
        names = ", ".join(c.name for c in list_calibrations(model_dir)) or "none"
        raise CalibrationError(f"no calibration named '{name}' for {model_dir} (available: {names})")
    calibration = _read(path)
    write_atomic(Path(model_dir) / ACTIVE_FILE, path.read_bytes())
    return calibration


def _read(path: Path) -> Calibration:
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise CalibrationError(f"cannot read calibration {path}: {exc}") from exc
