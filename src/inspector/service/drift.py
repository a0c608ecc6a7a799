"""Drift watch in the service: one `DriftMonitor` per served recipe, fed after each committed inspection.

The worker computes the image statistics from the decoded image (a fraction of a millisecond); the store thread
hands them, with the pass score, to the recipe's monitor once the record is committed. A recipe's monitor is
made on its first inspection, or when the page asks, and starts over when the recipe's model version changes
(a reload or a promotion): the new model has its own reference.

The reference (`recipe_reference`): the image statistics that `inspector fit` wrote into the model directory
(every training image), and for the pass score the good images the active calibration was made on (held out from
the fit; the training images' own scores are optimistic). What a model directory lacks is taken from the first
inspections after load, and the statistic's `reference_source` says so. The alarm is named in /readyz detail, set
in /metrics, on the page and in the PLC status word; it never makes the service unready.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from inspector.calibration import Calibration
from inspector.calibration.calibration import GOOD_SCORES
from inspector.calibration.store import model_fingerprint
from inspector.components.drift import DriftMonitor, DriftReference, DriftReferenceError, DriftRule
from inspector.service.registry import LoadedModel, read_calibration
from inspector.service.store import StoreReader

log = logging.getLogger(__name__)


def recipe_reference(model_dir: Path, calibration: Calibration | None) -> DriftReference | None:
    """The fit-time image statistics of the model directory plus the calibration's good scores, as far as they
    exist (None when neither does)."""
    try:
        reference = DriftReference.read(model_dir)
    except (DriftReferenceError, OSError) as exc:
        log.warning("%s: drift reference not used, taking the first inspections instead: %s", model_dir, exc)
        reference = None
    scores = calibration.data.get(GOOD_SCORES) if calibration is not None else None
    if scores:
        source = f"calibration {calibration.name if calibration else ''}: {len(scores)} held-out good images"
        from_calibration = DriftReference.from_values({"score": scores}, source)
        reference = from_calibration if reference is None else reference.merged(from_calibration)
    return reference


def model_version(model_dir: Path) -> str:
    """The version the service gives a model directory (as its registry does)."""
    return model_fingerprint(model_dir)[:12]


def monitored_values(verdict: str | None, score: float, image_stats: Mapping[str, float] | None) -> dict[str, float]:
    """What one inspection feeds the monitor: its image statistics, and its score when the part passed (or was
    not judged): a run of defects is not drift, and the reference holds good parts only."""
    values = dict(image_stats or {})
    if verdict in (None, "pass"):
        values["score"] = score
    return values


class RecipeDrift:
    """The monitor of one model version of a recipe."""

    def __init__(self, entry: LoadedModel, rule: DriftRule | None) -> None:
        self.name = entry.name
        self.version = entry.version
        self.started = entry.loaded_at.timestamp()
        self.monitor = DriftMonitor(recipe_reference(entry.dir, entry.calibration), rule)

    def snapshot(self, series: bool = True) -> dict[str, Any]:
        snapshot = self.monitor.snapshot(series)
        return {"model": self.name, "model_version": self.version, "started": self.started, **snapshot}


class DriftWatch:
    """Every served recipe's monitor. Thread-safe; `observe` costs well under a millisecond."""

    def __init__(self, rule: DriftRule | None = None) -> None:
        self.rule = rule
        self._recipes: dict[str, RecipeDrift] = {}
        self._lock = threading.Lock()

    def recipe(self, entry: LoadedModel) -> RecipeDrift:
        """The monitor of the entry's recipe, made anew when the recipe now serves another model version."""
        with self._lock:
            current = self._recipes.get(entry.name)
            if current is None or current.version != entry.version:
                current = self._recipes[entry.name] = RecipeDrift(entry, self.rule)
            return current

    def observe(
        self, entry: LoadedModel, verdict: str | None, score: float, image_stats: Mapping[str, float] | None, at: float
    ) -> None:
        """Feed one committed inspection; a failure here is logged and never reaches the inspection."""
        try:
            recipe = self.recipe(entry)
            was_on = recipe.monitor.alarm
            if recipe.monitor.observe(monitored_values(verdict, score, image_stats), at) and not was_on:
                log.warning("drift alarm on %s: %s", entry.name, recipe.monitor.summary())
        except Exception:
            log.exception("drift watch failed on an inspection of %s", entry.name)

    def snapshot(self, entries: Iterable[LoadedModel], series: bool = True) -> list[dict[str, Any]]:
        """The served recipes' monitors, in the order given (monitors of recipes no longer served are dropped);
        `series`: with the recent values and checks for plots."""
        served = list(entries)
        recipes = [self.recipe(entry) for entry in served]
        with self._lock:
            names = {entry.name for entry in served}
            for name in [n for n in self._recipes if n not in names]:
                del self._recipes[name]
        return [r.snapshot(series) for r in recipes]

    def alarms(self) -> dict[str, str]:
        """Recipe -> one line on its active alarm (statistics, PSI, since when)."""
        with self._lock:
            recipes = list(self._recipes.values())
        out = {}
        for r in recipes:
            if r.monitor.alarm:
                since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.monitor.since or 0))
                out[r.name] = f"{r.monitor.summary()} since {since}"
        return out

    def alarmed(self) -> bool:
        with self._lock:
            return any(r.monitor.alarm for r in self._recipes.values())


def replay(reader: StoreReader, name: str, model_dir: Path, since: float | None) -> dict[str, Any]:
    """The drift watch of a recipe rebuilt from the store (read-only): its current model version's inspections
    from `since` on, oldest first, through a fresh monitor with the same reference and rule as the service's. It
    shows the figures the page shows when `since` reaches back to the load of that version (the service's
    monitor starts there); records written before drift watch have no image statistics and feed the score only."""
    version = model_version(model_dir)
    calibration, _ = read_calibration(model_dir)
    monitor = DriftMonitor(recipe_reference(model_dir, calibration))
    rows = reader.drift_values(name, version, since)
    for created, verdict, score, stats in rows:
        monitor.observe(monitored_values(verdict, score, json.loads(stats) if stats else None), created)
    started = rows[0][0] if rows else time.time()
    return {"model": name, "model_version": version, "started": started, **monitor.snapshot()}
