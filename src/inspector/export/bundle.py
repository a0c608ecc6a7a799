"""`inspector export`: a fitted model -> a self-contained bundle for the line box, written only if it passes the
parity gate.

The bundle is a model directory like any other (load_scorer, `inspector serve|evaluate|predict` read it), holding
the network at the chosen precision, the method's state, the golden set, the parity report and, beside them, the
active calibration and its history. It is staged and scored from disk exactly as the line box will load it;
only when the gate passes is it written to its place, atomically.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inspector import __version__
from inspector.calibration import Calibration, list_calibrations, load_active_calibration, save_calibration
from inspector.calibration.store import model_fingerprint
from inspector.common.errors import InspectorError
from inspector.export.parity import ParityReport, compare
from inspector.models.golden import GOLDEN_FILE, GoldenSet
from inspector.models.persistence import MANIFEST, NETWORK_FILE, read_model_dir, write_model_dir
from inspector.models.scoring import load_scorer
from inspector.runtime.precision import Precision, convert_network

PARITY_FILE = "parity.json"


class ExportError(InspectorError, RuntimeError):
    """A model that cannot be exported as asked (no golden set, a bad destination)."""


class ParityError(ExportError):
    """The exported bundle disagrees with the fitted model; nothing was written. `report` says where."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(f"export refused: {report.summary()}")
        self.report = report


def export_bundle(
    model_dir: Path, out: Path, precision: Precision = "fp32", threads: int | None = None
) -> ParityReport:
    """Export `model_dir` to `out` at `precision`; raises ParityError (writing nothing) if the gate fails."""
    model_dir, out = Path(model_dir), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ExportError(f"--out must be a new folder, not the model directory itself ({model_dir})")
    if out.exists() and not (out / MANIFEST).is_file():
        raise ExportError(f"{out} exists and is not a model directory; choose an empty or new folder")
    manifest, files = read_model_dir(model_dir)
    if GOLDEN_FILE not in files:
        raise ExportError(
            f"{model_dir} has no golden set to check an export against (it was fitted before inspector kept one); "
            "re-fit it with `inspector fit`"
        )
    golden = GoldenSet.from_bytes(files[GOLDEN_FILE])
    calibration = load_active_calibration(model_dir)  # a stale calibration is an error here too
    bundle_manifest = _bundle_manifest(manifest, model_dir, precision)
    bundle_files = {**files, NETWORK_FILE: convert_network(files[NETWORK_FILE], precision, golden.batch("train"))}

    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        write_model_dir(staging, bundle_manifest, bundle_files)
        scorer = load_scorer(staging, threads=threads)
        result = scorer.score_batch(golden.batch())
        report = compare(golden, result, precision, calibration, scorer.runtime)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not report.passed:
        raise ParityError(report)

    bundle_files[PARITY_FILE] = json.dumps(report.to_dict(), indent=2).encode()
    # The calibrations go into the new folder before it replaces the old bundle: a kill never leaves a bundle
    # without the thresholds the line judges by.
    write_model_dir(out, bundle_manifest, bundle_files, lambda new: _carry_calibrations(model_dir, new, calibration))
    return report


def _bundle_manifest(manifest: dict[str, Any], model_dir: Path, precision: Precision) -> dict[str, Any]:
    kept = {k: v for k, v in manifest.items() if k not in ("files", "format_version")}
    return {
        **kept,
        "export": {
            "precision": precision,
            "source": str(model_dir.resolve()),
            "source_fingerprint": model_fingerprint(model_dir),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "inspector_version": __version__,
        },
    }


def _carry_calibrations(model_dir: Path, out: Path, active: Calibration | None) -> None:
    """Copy the calibration history into the bundle. Those made for this fit are re-stamped with the bundle's
    fingerprint (so they are not stale there) and remember the model they were made on; stale ones stay stale."""
    source, bundle = model_fingerprint(model_dir), model_fingerprint(out)
    for calibration in list_calibrations(model_dir):
        if calibration.model_fingerprint in ("", source):
            calibration.data = {**calibration.data, "calibrated_on_model": source}
            calibration.model_fingerprint = bundle
        save_calibration(out, calibration, activate=active is not None and calibration.name == active.name)
