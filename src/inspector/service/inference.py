"""Models in memory, a bounded work queue in front of a few worker threads, and one inspection end to end.

Why threads: onnxruntime and FAISS release the GIL, so on a 2-core line PC one or two workers use the CPU
fully while the event loop stays free to accept, reject and answer requests. Why bounded: a line camera
must get its answer within the takt time or not at all; when `workers + queue_size` requests are already
admitted, the next one gets 503 + Retry-After at once instead of waiting behind a growing queue.

Reload loads and warms a new model in the background and then swaps one reference; a request holds the
`LoadedModel` it was admitted with, so in-flight requests finish on the old model and none is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
from scipy import ndimage

from inspector.calibration import Calibration, CalibrationError, activate_calibration, load_active_calibration
from inspector.calibration.store import list_calibrations, model_fingerprint
from inspector.features.preprocess import Preprocessing, as_size
from inspector.models import AnomalyModel, load_model
from inspector.service.config import ModelSpec, Settings
from inspector.service.errors import Conflict, NotFound, ServiceError, Unavailable
from inspector.service.images import Upload, decode_upload
from inspector.service.metrics import ServiceMetrics
from inspector.service.store import InspectionStore, new_id

log = logging.getLogger(__name__)
R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True)
class LoadedModel:
    """A warmed-up model and the calibration that judges its scores; replaced whole, never mutated."""

    name: str
    dir: Path
    model: AnomalyModel
    version: str
    loaded_at: datetime
    calibration: Calibration | None
    calibration_error: str | None

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
    """The served models by name. Loading and reloading are blocking: call them from a thread."""

    def __init__(self, specs: list[ModelSpec], threads: int, warmup_runs: int) -> None:
        self.specs = {s.name: s for s in specs}
        self.threads = threads
        self.warmup_runs = warmup_runs
        self.entries: dict[str, LoadedModel] = {}
        self.error: str | None = None
        self._reloading: dict[str, threading.Lock] = {name: threading.Lock() for name in self.specs}

    @property
    def ready(self) -> bool:
        return len(self.entries) == len(self.specs) > 0

    def load_all(self) -> None:
        try:
            for name in self.specs:
                self.entries[name] = self._load(name)
        except Exception as exc:
            self.error = f"loading models failed: {exc}"
            raise

    def get(self, name: str | None) -> LoadedModel:
        if name is None:
            if len(self.specs) != 1:
                raise ServiceError(f"several models are loaded; say which with ?model= ({', '.join(self.specs)})")
            name = next(iter(self.specs))
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
            entry = self._load(name)
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
        for cal in list_calibrations(entry.dir):
            if cal.name == calibration and cal.model_fingerprint and cal.model_fingerprint != current:
                raise Conflict(f"calibration '{calibration}' was made for an earlier fit of '{name}'")
        try:
            activate_calibration(entry.dir, calibration)
        except CalibrationError as exc:
            raise NotFound(str(exc)) from exc
        cal, error = read_calibration(entry.dir)
        entry = replace(self.entries[name], calibration=cal, calibration_error=error)
        self.entries[name] = entry
        return entry

    def _load(self, name: str) -> LoadedModel:
        spec = self.specs[name]
        start = time.perf_counter()
        version = model_fingerprint(spec.dir)[:12]
        model = load_model(spec.dir, threads=self.threads)
        calibration, error = read_calibration(spec.dir)
        entry = LoadedModel(name, Path(spec.dir), model, version, datetime.now(timezone.utc), calibration, error)
        warm_up(entry, self.warmup_runs)
        log.info("model %s (%s %s) loaded and warmed up in %.1f s; %s", name, model.kind, version,
                 time.perf_counter() - start, f"calibration {calibration.name}" if calibration else error)  # fmt: skip
        return entry


def warm_up(entry: LoadedModel, runs: int) -> None:
    """Run the whole inspection path on noise so the first real part is as fast as the thousandth."""
    h, w = entry.model.preprocessing_.input_size
    rng = np.random.default_rng(0)
    _, png = cv2.imencode(".png", rng.integers(0, 256, (h + 7, w + 5, 3), dtype=np.uint8))
    for _ in range(runs):
        analyze(entry, decode_upload(png.tobytes(), (h + 7) * (w + 5)).rgb, max_regions=10)


@dataclass
class Analysis:
    score: float
    map: np.ndarray
    regions: list[dict[str, Any]]
    timings_ms: dict[str, float]


def analyze(entry: LoadedModel, rgb: np.ndarray, max_regions: int) -> Analysis:
    """Score one image and find its defect regions in original pixels."""
    result = entry.model.score([rgb])
    start = time.perf_counter()
    threshold = entry.map_threshold
    regions = []
    if threshold is not None and max_regions > 0:
        full = entry.model.preprocessing_.map_to_image(result.maps[0], rgb.shape[:2])
        regions = find_regions(full, threshold, max_regions)
    timings = dict(result.timings_ms)
    timings["postprocess"] += (time.perf_counter() - start) * 1e3
    return Analysis(float(result.scores[0]), result.maps[0], regions, timings)


def find_regions(amap: np.ndarray, threshold: float, limit: int) -> list[dict[str, Any]]:
    """Connected areas (8-connected) of the map at or above `threshold`: box, area, peak; highest peak first."""
    mask = (amap >= threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return []
    peaks = ndimage.maximum(amap, labels, index=np.arange(1, n))
    regions = [
        {"x": int(x), "y": int(y), "width": int(w), "height": int(h), "area": int(area), "peak": float(peak)}
        for (x, y, w, h, area), peak in zip(stats[1:], peaks, strict=True)
    ]
    return sorted(regions, key=lambda r: -r["peak"])[:limit]


def map_preprocessing(record: dict[str, Any]) -> Preprocessing:
    """The resize/crop a record's map was made with, so it can be drawn after the model changed."""
    pre = record["preprocessing"]
    return Preprocessing(as_size(pre["image_size"]), as_size(pre["crop_size"]))


class WorkQueue:
    """Admission control in front of two stages: `workers` threads compute, one thread persists.

    At most `workers + queue_size` requests are admitted at any time. A worker hands its result to the store
    thread and takes the next image at once, so inference never waits for fsync; the single store thread
    also keeps SQLite writes in one place.
    """

    def __init__(self, workers: int, queue_size: int, metrics: ServiceMetrics) -> None:
        self.capacity = workers + queue_size
        self.metrics = metrics
        self._compute = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect")
        self._persist = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0

    @property
    def full(self) -> bool:
        return self._admitted >= self.capacity

    async def run(self, compute: Callable[[float], R], persist: Callable[[R], T]) -> T:
        """`persist(compute(queue_ms))` on the two stages. The slot is freed when the work really ends, not when
        the client goes away, so abandoned requests still count against the bound while they use the CPU."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise _queue_full()
            self._admitted += 1
            self._update()
        done: Future[T] = Future()
        done.set_running_or_notify_cancel()  # a vanished client cannot cancel it: the slot stays taken until the end
        done.add_done_callback(self._release)
        try:
            first = self._compute.submit(self._timed, compute, time.perf_counter())
        except RuntimeError:  # pools shut down: the service is stopping
            done.set_exception(Unavailable("service is shutting down", "shutting_down", retry_after=5))
        else:
            first.add_done_callback(lambda f: self._hand_over(f, persist, done))
        return await asyncio.wrap_future(done)

    def _timed(self, compute: Callable[[float], R], enqueued: float) -> R:
        with self._lock:
            self._running += 1
            self._update()
        try:
            return compute((time.perf_counter() - enqueued) * 1e3)
        finally:
            with self._lock:
                self._running -= 1

    def _hand_over(self, first: Future[R], persist: Callable[[R], T], done: Future[T]) -> None:
        try:
            second = self._persist.submit(persist, first.result())
        except BaseException as exc:  # compute failed (bad image, ...), was cancelled, or the store pool is down
            done.set_exception(exc)
            return
        second.add_done_callback(lambda f: _settle(done, f))

    def _release(self, _: object) -> None:
        with self._lock:
            self._admitted -= 1
            self._update()

    def _update(self) -> None:
        self.metrics.queue_depth.set(self._admitted - self._running)
        self.metrics.in_flight.set(self._admitted)

    def shutdown(self) -> None:
        """Finish what was admitted (requests already waiting get their answer), then stop."""
        self._compute.shutdown(wait=True)
        self._persist.shutdown(wait=True)


@dataclass
class Scored:
    """What a worker hands to the store thread."""

    entry: LoadedModel
    upload: Upload
    analysis: Analysis
    timings_ms: dict[str, float]


class Inspector:
    """The service's shared state, and one inspection end to end: decode, score, judge (on a worker), write
    files and commit the record (on the store thread)."""

    def __init__(self, settings: Settings, registry: ModelRegistry, store: InspectionStore,
                 metrics: ServiceMetrics) -> None:  # fmt: skip
        self.settings = settings
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self.queue = WorkQueue(settings.workers, settings.queue_size, metrics)

    def publish_models(self) -> None:
        self.metrics.set_models([(e.name, e.version, e.calibration.name if e.calibration else None)
                                 for e in self.registry.entries.values()])  # fmt: skip

    def publish_store_stats(self) -> None:
        records, nbytes = self.store.stats()
        self.metrics.store_records.set(records)
        self.metrics.store_bytes.set(nbytes)

    def admissible(self, model: str | None) -> LoadedModel:
        """The model to use, or the error the request would end in anyway (so it ends before the upload)."""
        entry = self.registry.get(model)
        if entry.calibration is None and self.settings.require_calibration:
            raise Conflict(f"model '{entry.name}' has no valid calibration: {entry.calibration_error}")
        self.store.check_space()
        if self.queue.full:
            raise _queue_full()
        return entry

    async def inspect(self, data: bytes, model: str | None, meta: dict[str, str | None], arrived: float) -> dict:
        """Admit (or refuse at once), run the two stages, and return the committed record."""
        entry = self.admissible(model)
        return await self.queue.run(lambda queue_ms: self._score(entry, data, queue_ms),
                                    lambda scored: self._persist(scored, meta, arrived))  # fmt: skip

    def _score(self, entry: LoadedModel, data: bytes, queue_ms: float) -> Scored:
        start = time.perf_counter()
        upload = decode_upload(data, self.settings.max_image_pixels)
        decode_ms = (time.perf_counter() - start) * 1e3
        analysis = analyze(entry, upload.rgb, self.settings.max_regions)
        return Scored(entry, upload, analysis, {"queue": queue_ms, "decode": decode_ms, **analysis.timings_ms})

    def _persist(self, scored: Scored, meta: dict[str, str | None], arrived: float) -> dict:
        entry, upload, analysis, cal = scored.entry, scored.upload, scored.analysis, scored.entry.calibration
        created = round(time.time(), 6)  # microseconds: exactly what the API shows and filters on
        record_id = new_id(created)
        start = time.perf_counter()
        files = self.store.write_files(record_id, created, upload.data, upload.suffix, analysis.map)
        now = time.perf_counter()
        timings = {**scored.timings_ms, "store": (now - start) * 1e3, "total": (now - arrived) * 1e3}
        record = {
            "id": record_id, "created": created, "model": entry.name, "model_version": entry.version,
            "calibrated": cal is not None, "calibration": cal.name if cal else None,
            "verdict": cal.verdict(analysis.score) if cal else None, "score": analysis.score,
            "normalized_score": cal.normalized(analysis.score) if cal else None,
            "threshold": cal.image_threshold if cal else None, "pixel_threshold": entry.map_threshold,
            "regions": analysis.regions, "width": upload.rgb.shape[1], "height": upload.rgb.shape[0],
            "media_type": upload.media_type, "preprocessing": entry.model.preprocessing_.to_dict(),
            "timings_ms": {k: round(v, 3) for k, v in timings.items()}, **meta,
        }  # fmt: skip
        stored = self.store.insert(record, files)
        self.metrics.observe_inspection(entry.name, record["verdict"], timings)
        return stored


def _settle(done: Future[T], source: Future[T]) -> None:
    exc = source.exception()
    if exc is None:
        done.set_result(source.result())
    else:
        done.set_exception(exc)


def _queue_full() -> Unavailable:
    return Unavailable("inspection queue is full; retry shortly", "queue_full", retry_after=1)
