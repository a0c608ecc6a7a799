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
from pathlib import Path

from inspector.calibration.calibration import Calibration, CalibrationError
from inspector.common.files import write_atomic
from inspector.models.persistence import MANIFEST

ACTIVE_FILE = "calibration.json"
ARCHIVE_DIR = "calibrations"


class CalibrationNotFound(CalibrationError):
    """No archived calibration of that name."""


def archived_path(model_dir: Path, name: str) -> Path:
    """Where the calibration `name` is archived; a name that could leave the folder (`/`, NUL) is refused."""
    if not name or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise CalibrationError(f"calibration name must be letters, digits, '.', '_' or '-': {name!r}")
    return Path(model_dir) / ARCHIVE_DIR / f"{name}.json"


def model_fingerprint(model_dir: Path) -> str:
    """Checksum of the model's manifest: changes whenever the model is re-fitted."""
    manifest = Path(model_dir) / MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else ""


def save_calibration(model_dir: Path, calibration: Calibration, activate: bool = True) -> Path:
    """Archive the calibration under its name and, by default, make it the active one."""
    model_dir = Path(model_dir)
    archived = archived_path(model_dir, calibration.name)
    calibration.model_fingerprint = calibration.model_fingerprint or model_fingerprint(model_dir)
    data = json.dumps(calibration.to_dict(), indent=2).encode()
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
    if not allow_stale and is_stale(calibration, model_fingerprint(Path(model_dir))):
        raise CalibrationError(f"{path} was made for an earlier fit of this model; run `inspector calibrate` again")
    return calibration


def is_stale(calibration: Calibration, fingerprint: str) -> bool:
    """True when the calibration was made for another fit than the model whose manifest has `fingerprint`
    (one that records no fingerprint, or a model without a manifest, cannot be judged and is not stale)."""
    return bool(calibration.model_fingerprint and fingerprint and calibration.model_fingerprint != fingerprint)


def activate_calibration(model_dir: Path, name: str) -> Calibration:
    """Make an archived calibration the active one (no re-fit, no re-export); a stale one is refused."""
    try:
        path = archived_path(model_dir, name)
    except CalibrationError as exc:
        raise CalibrationNotFound(str(exc)) from exc
    if not path.is_file():
        names = ", ".join(c.name for c in list_calibrations(model_dir)) or "none"
        raise CalibrationNotFound(f"no calibration named '{name}' for {model_dir} (available: {names})")
    calibration = _read(path)
    if is_stale(calibration, model_fingerprint(Path(model_dir))):
        raise CalibrationError(f"calibration '{name}' was made for an earlier fit of {model_dir}; calibrate again")
    write_atomic(Path(model_dir) / ACTIVE_FILE, path.read_bytes())
    return calibration


def _read(path: Path) -> Calibration:
    try:
        return Calibration.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise CalibrationError(f"cannot read calibration {path}: {exc}") from exc
