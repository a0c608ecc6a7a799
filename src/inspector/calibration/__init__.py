"""Turning scores into pass / review / fail, with thresholds a line engineer can reason about.

calibration.py  the Calibration (thresholds, review band, verdicts), its rule names and defaults
store.py        calibrations beside the model directory: archive, active one, stale check
rules.py        threshold rules and their bounds, confusion counts (numpy/scipy, no model)
workflow.py     choosing the images, scoring them once, deciding (what `inspector calibrate` runs)
report.py       the summary, plots and HTML report
"""

from inspector.calibration.calibration import Calibration, CalibrationError, Verdict
from inspector.calibration.store import (
    activate_calibration,
    list_calibrations,
    load_active_calibration,
    save_calibration,
)

__all__ = [
    "Calibration",
    "CalibrationError",
    "Verdict",
    "activate_calibration",
    "list_calibrations",
    "load_active_calibration",
    "save_calibration",
]
