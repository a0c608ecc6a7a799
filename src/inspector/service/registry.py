"""The served models in memory: loading, warm-up, reload and switching calibration, all at run time.

Reload loads and warms a new model in the background and then swaps one reference; a request holds the
`LoadedModel` it was admitted with, so in-flight requests finish on the old model and none is dropped. Unloading
drops the registry's reference the same way: requests already admitted finish on the model they hold.

Recipe numbers (what a PLC selects) are positions in `recipes`: a model added at run time takes the next number,
an unloaded one leaves its number empty until the service restarts (or the same name is loaded again), so the
numbers of the models that remain never move.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from inspector.calibration import (
    Calibration,
    CalibrationError,
    activate_calibration,
    load_active_calibration,
    save_calibration,
)
from inspector.calibration.store import CalibrationNotFound, is_stale, list_calibrations, model_fingerprint
from inspector.models.scoring import Scorer, load_scorer
from inspector.service.analysis import warm_up
from inspector.service.config import ModelSpec
from inspector.service.errors import Conflict, NotFound, ServiceError, Unavailable
from inspector.service.memory import OverBudget, check_budget, estimate_mb, rss_mb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A warmed-up model and the calibration that judges its scores; replaced whole, never mutated."""

    name: str
    dir: Path
    scorer: Scorer
    version: str
    loaded_at: datetime
    calibration: Calibration | None
    calibration_error: str | None
    estimated_mb: float
    resident_mb: float

    @property
    def map_threshold(self) -> float | None:
        """The pixel threshold for regions; a calibration without one falls back to its image threshold."""
        cal = self.calibration
        return None if cal is None else cal.pixel_threshold or cal.image_threshold


def read_calibration(model_dir: Path) -> tuple[Calibration | None, str | None]:
    """The active calibration, or None and why (none made yet, or stale: made for an earlier fit)."""
    try:
        calibration = load_active_calibration(model_dir)
    except CalibrationError as exc:
        log.warning("%s: calibration not used: %s", model_dir, exc)
        return None, str(exc)
    return calibration, None if calibration else "no active calibration (run `inspector calibrate`)"


class ModelRegistry:
    """The served models by name. Loading and reloading are blocking: call them from a thread.

    `threads` is each model's onnxruntime intra-op thread count (per session); FAISS's process-wide count is
    set once where the service starts, not here. `budget_mb` caps the models' memory (None: no cap).
    A model refused for the budget at start-up is in `refused` (with why) and the others serve."""

    def __init__(self, specs: list[ModelSpec], threads: int, warmup_runs: int, budget_mb: float | None = None) -> None:
        self.specs = {s.name: s for s in specs}
        self.recipes: list[str | None] = list(self.specs)
        self.threads = threads
        self.warmup_runs = warmup_runs
        self.budget_mb = budget_mb
        self.entries: dict[str, LoadedModel] = {}
        self.refused: dict[str, str] = {}
        self.error: str | None = None
        self._reloading: dict[str, threading.Lock] = {name: threading.Lock() for name in self.specs}
        self._loading = threading.Lock()  # one budget check and load at a time, so two loads cannot both fit

    @property
    def ready(self) -> bool:
        return len(self.entries) == len(self.specs) > 0

    def load_all(self, on_loaded: Callable[[LoadedModel], None] | None = None) -> None:
        """Load every model; `on_loaded` (the audit log) hears of each before it serves its first request."""
        try:
            for name in list(self.specs):
                try:
                    entry = self._load_within_budget(self.specs[name])
                except OverBudget as exc:
                    log.error("%s", exc.detail)
                    self.refused[name] = exc.detail
                    del self.specs[name]
                    continue
                if on_loaded is not None:
                    on_loaded(entry)
                self.entries[name] = entry
        except Exception as exc:
            self.error = f"loading models failed: {exc}"
            raise

    def add(self, spec: ModelSpec, on_loaded: Callable[[LoadedModel], None] | None = None) -> LoadedModel:
        """Load, warm and serve another model (a new recipe) at run time; refused over the memory budget."""
        if spec.name in self.specs:
            raise Conflict(f"model '{spec.name}' is already loaded; unload it first or give another name")
        entry = self._load_within_budget(spec)
        if spec.name in self.specs:  # loaded meanwhile by another request under the same name
            raise Conflict(f"model '{spec.name}' is already loaded; unload it first or give another name")
        if on_loaded is not None:
            on_loaded(entry)
        self.entries[spec.name] = entry
        self._reloading[spec.name] = threading.Lock()
        self.specs[spec.name] = spec
        self.refused.pop(spec.name, None)
        if spec.name in self.recipes:
            self.recipes[self.recipes.index(spec.name)] = spec.name
        else:
            self.recipes.append(spec.name)
        return entry

    def remove(self, name: str) -> LoadedModel:
        """Stop serving a model; requests that hold it finish on it, and its memory goes with the last of them."""
        entry = self.get(name)
        if self._reloading[name].locked():
            raise Conflict(f"model '{name}' is being reloaded; unload it when the reload has finished")
        del self.specs[name]
        del self.entries[name]
        del self._reloading[name]
        self.recipes[self.recipes.index(name)] = None
        return entry

    def get(self, name: str | None) -> LoadedModel:
        if name is None:
            if len(self.specs) != 1:
                raise ServiceError(f"several models are loaded; say which with ?model= ({', '.join(self.specs)})")
            name = next(iter(self.specs))
        if name in self.refused:
            raise OverBudget(self.refused[name])
        if name not in self.specs:
            raise NotFound(f"model '{name}' is not loaded (loaded: {', '.join(self.specs) or 'none'})")
        entry = self.entries.get(name)
        if entry is None:
            raise Unavailable(f"model '{name}' is still loading", "not_ready", retry_after=5)
        return entry

    def reload(self, name: str) -> LoadedModel:
        """Load the directory again (a re-fit, a new calibration), warm it, then swap; old one serves meanwhile."""
        self.get(name)
        lock = self._reloading[name]
        if not lock.acquire(blocking=False):
            raise Conflict(f"model '{name}' is already being reloaded")
        try:
            entry = self._load(self.specs[name])
        except Exception as exc:  # whatever went wrong, the model that serves now must keep serving
            raise Conflict(f"reload of '{name}' failed, the previous model keeps serving: {exc}") from exc
        finally:
            lock.release()
        self.entries[name] = entry
        return entry

    def activate(self, name: str, calibration: str) -> LoadedModel:
        """Switch the active calibration at run time; refuses one made for an earlier fit of the model."""
        entry = self.get(name)
        current = model_fingerprint(entry.dir)
        if any(c.name == calibration and is_stale(c, current) for c in list_calibrations(entry.dir)):
            raise Conflict(f"calibration '{calibration}' was made for an earlier fit of '{name}'")
        try:
            activate_calibration(entry.dir, calibration)
        except CalibrationNotFound as exc:
            raise NotFound(str(exc)) from exc
        except CalibrationError as exc:  # became stale since the check above: the model was re-fitted meanwhile
            raise Conflict(str(exc)) from exc
        cal, error = read_calibration(entry.dir)
        entry = replace(self.entries[name], calibration=cal, calibration_error=error)
        self.entries[name] = entry
        return entry

    def set_review_band(self, name: str, band: tuple[float, float] | None) -> LoadedModel:
        """A copy of the active calibration with another review band (normalised units), archived and activated,
        so it survives a restart and stays in the model's calibration history; the next inspection uses it."""
        entry = self.get(name)
        if entry.calibration is None:
            raise Conflict(f"model '{name}' has no active calibration whose review band could change")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        changed = replace(
            entry.calibration, review_band=band, name=f"{entry.calibration.rule}-band-{stamp}", created=""
        )
        save_calibration(entry.dir, changed)
        entry = replace(self.entries[name], calibration=changed, calibration_error=None)
        self.entries[name] = entry
        log.info("model %s: review band set to %s (calibration %s)", name, band, changed.name)
        return entry

    def _load_within_budget(self, spec: ModelSpec) -> LoadedModel:
        with self._loading:
            loaded = {name: max(e.resident_mb, e.estimated_mb) for name, e in self.entries.items()}
            check_budget(spec.name, estimate_mb(spec.dir), loaded, self.budget_mb)
            return self._load(spec)

    def _load(self, spec: ModelSpec) -> LoadedModel:
        """Load and warm up; the RSS growth across both is the model's measured size (approximate: other
        requests allocate meanwhile, and memory freed earlier may be reused)."""
        name = spec.name
        start, rss_before = time.perf_counter(), rss_mb()
        estimated = estimate_mb(spec.dir)
        version = model_fingerprint(spec.dir)[:12]
        scorer = load_scorer(spec.dir, threads=self.threads)
        calibration, error = read_calibration(spec.dir)
        entry = LoadedModel(
            name, Path(spec.dir), scorer, version, datetime.now(UTC), calibration, error, estimated, 0.0
        )
        warm_up(entry.scorer, entry.map_threshold, self.warmup_runs)
        entry = replace(entry, resident_mb=max(0.0, rss_mb() - rss_before))
        log.info(
            "model %s (%s %s, %s) loaded and warmed up in %.1f s, %.1f MiB resident (estimated %.1f); %s",
            name,
            scorer.kind,
            version,
            scorer.runtime,
            time.perf_counter() - start,
            entry.resident_mb,
            estimated,
            f"calibration {calibration.name}" if calibration else error,
        )
        return entry
