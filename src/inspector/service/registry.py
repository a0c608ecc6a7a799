"""The served models in memory: loading, warm-up, reload and switching calibration, all at run time.

Reload loads and warms a new model in the background and then swaps one reference; a request holds the
`LoadedModel` it was admitted with, so in-flight requests finish on the old model and none is dropped. Unloading
drops the registry's reference the same way: requests already admitted finish on the model they hold.

Recipe numbers (what a PLC selects) are positions in `recipes`: a model added at run time takes the next number,
an unloaded one leaves its number empty until the service restarts (or the same name is loaded again), so the
numbers of the models that remain never move.

Versions: a recipe may have a shadow version, loaded and warmed beside the active one, that scores the same images
without its verdicts reaching the line (service.shadow). `promote` makes the shadow active in one reference swap
and keeps the version it replaced for `rollback`; both rewrite the recipe's pointer file (service.recipes) before
the swap, so a restart serves what was promoted. The recipe's name and number never change. A version kept for
rollback stays in memory while the service runs (a rollback is then a swap too) and is loaded again on demand
after a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
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
from inspector.service.recipes import VersionPointer, read_pointer, versions_dir, write_pointer

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
    A model refused for the budget at start-up, or one that fails to load (a damaged file), is in `refused`
    with the error its requests get, and the others serve."""

    def __init__(self, specs: list[ModelSpec], threads: int, warmup_runs: int, budget_mb: float | None = None) -> None:
        self.specs = {s.name: s for s in specs}
        self.recipes: list[str | None] = list(self.specs)
        self.threads = threads
        self.warmup_runs = warmup_runs
        self.budget_mb = budget_mb
        self.entries: dict[str, LoadedModel] = {}
        self.refused: dict[str, ServiceError] = {}
        self.error: str | None = None
        self.homes = {s.name: Path(s.dir) for s in specs}  # each recipe's own folder: where its pointer lives
        self.shadows: dict[str, LoadedModel] = {}
        self.previous: dict[str, LoadedModel] = {}  # the version a promotion replaced, kept for rollback
        self.pointers: dict[str, VersionPointer] = {}
        self._reloading: dict[str, threading.Lock] = {name: threading.Lock() for name in self.specs}
        self._loading = threading.Lock()  # one budget check and load at a time, so two loads cannot both fit
        self._versions = threading.Lock()  # one change of which version serves a recipe at a time

    @property
    def ready(self) -> bool:
        return len(self.entries) == len(self.specs) > 0

    def load_all(self, on_loaded: Callable[[LoadedModel], None] | None = None) -> None:
        """Load every model; `on_loaded` (the audit log) hears of each before it serves its first request."""
        for name in list(self.specs):
            try:
                self._follow_pointer(name)
                entry = self._load_within_budget(self.specs[name])
            except OverBudget as exc:
                log.error("%s", exc.detail)
                self._refuse(name, exc)
                continue
            except Exception as exc:  # a damaged model must not keep the other recipes off the line
                log.exception("model %s cannot be loaded; the other models serve", name)
                self._refuse(name, ServiceError(f"model '{name}' could not be loaded: {exc}", 503, "model_failed"))
                continue
            if on_loaded is not None:
                on_loaded(entry)
            self.entries[name] = entry
        if not self.entries:
            self.error = "no model could be loaded: " + "; ".join(e.detail for e in self.refused.values())
            raise RuntimeError(self.error)
        self._restore_shadows()

    def _refuse(self, name: str, error: ServiceError) -> None:
        self.refused[name] = error
        del self.specs[name]

    def add(self, spec: ModelSpec, on_loaded: Callable[[LoadedModel], None] | None = None) -> LoadedModel:
        """Load, warm and serve another model (a new recipe) at run time; refused over the memory budget."""
        if spec.name in self.specs:
            raise Conflict(f"model '{spec.name}' is already loaded; unload it first or give another name")
        pointer = read_pointer(spec.dir)
        entry = self._load_within_budget(ModelSpec(dir=pointer.active, name=spec.name))
        if spec.name in self.specs:  # loaded meanwhile by another request under the same name
            raise Conflict(f"model '{spec.name}' is already loaded; unload it first or give another name")
        if on_loaded is not None:
            on_loaded(entry)
        self.entries[spec.name] = entry
        self._reloading[spec.name] = threading.Lock()
        self.homes[spec.name] = Path(spec.dir)
        self.pointers[spec.name] = pointer
        self.specs[spec.name] = ModelSpec(dir=pointer.active, name=spec.name)
        self.refused.pop(spec.name, None)
        if spec.name in self.recipes:
            self.recipes[self.recipes.index(spec.name)] = spec.name
        else:
            self.recipes.append(spec.name)
        self._restore_shadow(spec.name)
        return entry

    def remove(self, name: str) -> LoadedModel:
        """Stop serving a model; requests that hold it finish on it, and its memory goes with the last of them."""
        entry = self.get(name)
        if self._reloading[name].locked():
            raise Conflict(f"model '{name}' is being reloaded; unload it when the reload has finished")
        with self._versions:
            del self.specs[name]
            del self.entries[name]
            del self._reloading[name]
            self.shadows.pop(name, None)  # the pointer keeps them: loading the recipe again restores both
            self.previous.pop(name, None)
        self.recipes[self.recipes.index(name)] = None
        return entry

    def get(self, name: str | None) -> LoadedModel:
        if name is None:
            if not self.specs:
                raise Unavailable("no model is loaded", "no_model", retry_after=5)
            if len(self.specs) != 1:
                raise ServiceError(f"several models are loaded; say which with ?model= ({', '.join(self.specs)})")
            name = next(iter(self.specs))
        if name in self.refused:
            raise self.refused[name]
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
            spec = self.specs[name]
            entry = self._load(spec)
            with self._versions:
                if self.specs.get(name) != spec:
                    raise Conflict(f"'{name}' was promoted, rolled back or unloaded while it reloaded")
                self.entries[name] = entry
        except Conflict:
            raise
        except Exception as exc:  # whatever went wrong, the model that serves now must keep serving
            raise Conflict(f"reload of '{name}' failed, the previous model keeps serving: {exc}") from exc
        finally:
            lock.release()
        return entry

    def activate(self, name: str, calibration: str) -> LoadedModel:
        """Switch the active calibration at run time; refuses one made for an earlier fit of the model."""
        with self._versions:  # the version whose calibration changes is the one that serves after the change
            return self._activate(name, calibration)

    def _activate(self, name: str, calibration: str) -> LoadedModel:
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
        with self._versions:
            return self._set_review_band(name, band)

    def _set_review_band(self, name: str, band: tuple[float, float] | None) -> LoadedModel:
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

    # ---- versions: shadow, promote, rollback ------------------------------------------------------------------

    def versions_dir(self, recipe: str) -> Path:
        """Where new versions of the recipe go by convention (a re-fit writes its model directory below it)."""
        self.get(recipe)
        return versions_dir(self.homes[recipe])

    def shadow(self, recipe: str) -> LoadedModel | None:
        """The version scoring in shadow beside the active one, if any."""
        return self.shadows.get(recipe)

    def load_shadow(self, recipe: str, model_dir: Path) -> LoadedModel:
        """Load and warm `model_dir` as the recipe's shadow version (within the memory budget, counting the shadow
        it replaces, which is in memory until the swap), then swap it in; the pointer remembers it."""
        active = self.get(recipe)
        model_dir = Path(model_dir)
        if model_dir.resolve() == active.dir.resolve():
            raise Conflict(f"{model_dir} is the active version of '{recipe}'; a shadow must be another version")
        entry = self._load_within_budget(ModelSpec(dir=model_dir, name=recipe), f"{recipe} (shadow)")
        with self._versions:
            self.get(recipe)  # unloaded meanwhile: drop what was loaded
            self.shadows[recipe] = entry
            self._save_pointer(recipe)
        log.info("model %s: version %s (%s) scores in shadow", recipe, entry.version, entry.dir)
        return entry

    def drop_shadow(self, recipe: str) -> None:
        """Stop scoring in shadow; jobs already queued finish on the version they hold."""
        with self._versions:
            self.get(recipe)
            if self.shadows.pop(recipe, None) is not None:
                self._save_pointer(recipe)

    def promote(self, recipe: str, on_promote: Callable[[LoadedModel, LoadedModel], None] | None = None) -> LoadedModel:
        """Make the shadow the active version in one reference swap: a request is answered wholly by the version
        it was admitted with. `on_promote(old, new)` (the audit log) runs first and may refuse by raising; then
        the pointer is rewritten, then the swap. The replaced version is kept for `rollback`."""
        with self._versions:
            old = self.get(recipe)
            new = self.shadows.get(recipe)
            if new is None:
                raise Conflict(f"'{recipe}' has no shadow version to promote")
            self._refuse_while_reloading(recipe)
            if on_promote is not None:
                on_promote(old, new)
            self._swap(recipe, new, old, shadow=None)
        log.info("model %s: promoted %s (%s), replacing %s", recipe, new.version, new.dir, old.version)
        return new

    def rollback(
        self, recipe: str, on_rollback: Callable[[LoadedModel, LoadedModel], None] | None = None
    ) -> LoadedModel:
        """Serve the version the last promotion replaced again, in one reference swap; the version it replaces is
        kept in its turn, so a second rollback undoes the first. After a restart the previous version is loaded
        (and warmed) first, within the memory budget, while the active one keeps serving."""
        self.get(recipe)
        previous = self.previous.get(recipe)
        pointer = self.pointers.get(recipe)
        if previous is None:
            if pointer is None or pointer.previous is None:
                raise Conflict(f"'{recipe}' has no previous version to roll back to")
            spec = ModelSpec(dir=pointer.previous, name=recipe)
            try:
                previous = self._load_within_budget(spec, f"{recipe} (previous)")
            except ServiceError:
                raise
            except Exception as exc:  # gone or damaged: the active version keeps serving
                raise Conflict(f"the previous version of '{recipe}' ({spec.dir}) cannot be loaded: {exc}") from exc
        with self._versions:
            old = self.get(recipe)
            if self.pointers.get(recipe) != pointer:
                raise Conflict(f"the versions of '{recipe}' changed while the previous one loaded; try again")
            self._refuse_while_reloading(recipe)
            if on_rollback is not None:
                on_rollback(old, previous)
            self._swap(recipe, previous, old, shadow=self.shadows.get(recipe))
        log.info("model %s: rolled back to %s (%s), replacing %s", recipe, previous.version, previous.dir, old.version)
        return previous

    def _refuse_while_reloading(self, recipe: str) -> None:
        if self._reloading[recipe].locked():
            raise Conflict(f"model '{recipe}' is being reloaded; try again when the reload has finished")

    def _swap(self, recipe: str, active: LoadedModel, previous: LoadedModel, shadow: LoadedModel | None) -> None:
        """Under `_versions`: the pointer first (a crash after it serves the new version on restart), then the
        one assignment requests see."""
        pointer = VersionPointer(active.dir, previous.dir, shadow.dir if shadow else None)
        write_pointer(self.homes[recipe], pointer)
        self.pointers[recipe] = pointer
        self.previous[recipe] = previous
        if shadow is None:
            self.shadows.pop(recipe, None)
        else:
            self.shadows[recipe] = shadow
        self.specs[recipe] = ModelSpec(dir=active.dir, name=recipe)
        self.entries[recipe] = active

    def _save_pointer(self, recipe: str) -> None:
        """Under `_versions`: the pointer as the registry holds the recipe now."""
        shadow = self.shadows.get(recipe)
        old = self.pointers.get(recipe)
        pointer = VersionPointer(
            self.entries[recipe].dir, old.previous if old else None, shadow.dir if shadow else None
        )
        if pointer != old:
            write_pointer(self.homes[recipe], pointer)
            self.pointers[recipe] = pointer

    def _follow_pointer(self, recipe: str) -> None:
        """At start-up: serve the version the recipe's pointer names (what was last promoted)."""
        pointer = read_pointer(self.homes[recipe])
        self.pointers[recipe] = pointer
        self.specs[recipe] = ModelSpec(dir=pointer.active, name=recipe)

    def _restore_shadows(self) -> None:
        """At start-up, after every active version serves: load the shadows the pointers name."""
        for recipe in list(self.pointers):
            self._restore_shadow(recipe)

    def _restore_shadow(self, recipe: str) -> None:
        """Load the shadow the recipe's pointer names, if any. One that cannot load (gone, over the budget) is
        logged and left out; the line never waits for a shadow."""
        pointer = self.pointers.get(recipe)
        if pointer is None or pointer.shadow is None or recipe not in self.entries:
            return
        try:
            self.load_shadow(recipe, pointer.shadow)
        except Exception as exc:
            log.error("model %s: shadow version %s not loaded: %s", recipe, pointer.shadow, exc)

    def _load_within_budget(self, spec: ModelSpec, label: str = "") -> LoadedModel:
        """Load unless the loaded models (every version in memory: active, shadow, kept for rollback) and this
        one would exceed the budget; `label` names it in the refusal (`bottle (shadow)`)."""
        with self._loading:
            loaded = {shown: max(e.resident_mb, e.estimated_mb) for shown, e in self._in_memory()}
            check_budget(label or spec.name, estimate_mb(spec.dir), loaded, self.budget_mb)
            return self._load(spec)

    def _in_memory(self) -> Iterator[tuple[str, LoadedModel]]:
        yield from self.entries.items()
        yield from ((f"{n} (shadow)", e) for n, e in list(self.shadows.items()))
        yield from ((f"{n} (previous)", e) for n, e in list(self.previous.items()))

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
