"""Exporting a fitted model for the line box: the bundle (bundle.py) and the parity gate it must pass (parity.py).

Sits above calibration because the gate compares verdicts under the active calibration.
"""

from inspector.export.bundle import ExportError, ParityError, export_bundle
from inspector.export.parity import TOLERANCES, ParityReport, Tolerance

__all__ = ["TOLERANCES", "ExportError", "ParityError", "ParityReport", "Tolerance", "export_bundle"]
