"""Turning scores into pass / review / fail, with thresholds a line engineer can reason about."""

from inspector.calibration.store import (
    Calibration,
    CalibrationError,
    activate_calibration,
    list_calibrations,
    load_active_calibration,
    save_calibration,
)

__all__ = [
    "Calibration",
    "CalibrationError",
    "activate_calibration",
    "list_calibrations",
    "load_active_calibration",
    "save_calibration",
]
