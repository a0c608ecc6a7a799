"""The recipes' golden samples in the service: where they are, seeding them from reviewed inspections, and the gate
a version must pass before it is promoted (calibration.gate, the same check `inspector gate` runs).

    <golden_dir>/<recipe>/good/     <golden_dir>/<recipe>/defect/

A gate result is cached per (version, calibration, golden set): the page shows it on every visit, and scoring
the golden set again costs as many inferences as it has images.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from inspector.calibration.gate import GateError, GateReport, run_gate
from inspector.calibration.golden_samples import GoldenSample, add_golden_sample, golden_samples, signature
from inspector.service.errors import Conflict
from inspector.service.registry import LoadedModel
from inspector.service.store import InspectionRecord, InspectionStore


class GoldenSets:
    """Every recipe's golden set below one folder; thread-safe (a gate runs in a worker thread)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str, str], GateReport] = {}

    def folder(self, recipe: str) -> Path:
        return self.root / recipe

    def samples(self, recipe: str) -> list[GoldenSample]:
        return golden_samples(self.folder(recipe))

    def check(self, entry: LoadedModel) -> GateReport | None:
        """The gate for this version of the recipe; None when the recipe has no golden samples (nothing to
        check). A version without a calibration cannot be judged: `Conflict`."""
        samples = self.samples(entry.name)
        if not samples:
            return None
        cal = entry.calibration
        key = (entry.version, repr(cal.to_dict()) if cal else "", signature(samples), str(entry.dir))
        with self._lock:
            if key not in self._cache:
                try:
                    self._cache[key] = run_gate(entry.scorer, cal, samples)
                except GateError as exc:
                    raise Conflict(
                        f"the golden gate cannot judge version {entry.version} of '{entry.name}': {exc}"
                    ) from exc
            return self._cache[key]

    def seed(self, recipe: str, records: Iterable[InspectionRecord], store: InspectionStore) -> list[GoldenSample]:
        """Copy reviewed inspections of the recipe into its golden set, labelled by their review (the image byte
        for byte, named by the inspection id). Refuses a record of another recipe or one not reviewed."""
        added = []
        for record in records:
            if record.model != recipe:
                raise Conflict(f"inspection {record.id} belongs to '{record.model}', not '{recipe}'")
            if record.review_verdict is None:
                raise Conflict(f"inspection {record.id} has no review: only reviewed parts have a known verdict")
            data = store.path(record.image_file).read_bytes()
            name = f"{record.id}{Path(record.image_file).suffix}"
            added.append(add_golden_sample(self.folder(recipe), record.review_verdict, name, data))
        return added
