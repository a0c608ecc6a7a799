"""Shadow scoring: a recipe's shadow version scores the images its active version judged, off the request path.

An inspection is handed over after its record is committed (and after the camera's answer is decided): the shadow
never delays, changes or reaches an answer, the PLC or any other line link; its verdicts only go to the store
(`shadow_results`), where the disagreements with the active version are read. One thread works a small bounded
queue at a lower CPU priority (nice +10 on Linux); when the shadow falls behind, an image is skipped rather than
queued without bound, and the skip is counted (`inspector_shadow_skipped`), so the line's latency does not double.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass

import numpy as np

from inspector.service.metrics import ServiceMetrics
from inspector.service.registry import LoadedModel, ModelRegistry
from inspector.service.store import InspectionRecord, InspectionStore, ShadowRecord

log = logging.getLogger(__name__)

SHADOW_QUEUE = 4  # images waiting for the shadow; beyond this they are skipped
SHADOW_NICE = 10  # added to the shadow thread's nice value: the line's workers come first


@dataclass(frozen=True)
class _Job:
    record: InspectionRecord
    rgb: np.ndarray
    shadow: LoadedModel


class ShadowScorer:
    """Feeds committed inspections to the recipe's shadow version, if it has one, on a thread of its own."""

    def __init__(
        self, registry: ModelRegistry, store: InspectionStore, metrics: ServiceMetrics, capacity: int = SHADOW_QUEUE
    ) -> None:
        self.registry = registry
        self.store = store
        self.metrics = metrics
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=capacity)
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    def submit(self, record: InspectionRecord, rgb: np.ndarray) -> None:
        """Queue the image for the shadow of the recipe that judged it (never blocks; skipped when full)."""
        shadow = self.registry.shadow(record.model)
        if shadow is None or shadow.version == record.model_version:
            return
        try:
            self._jobs.put_nowait(_Job(record, rgb, shadow))
        except queue.Full:
            self.metrics.shadow_skipped.labels(record.model, "behind").inc()
            return
        self._ensure_running()

    def join(self) -> None:
        """Until every queued image is scored (tests and benchmarks)."""
        self._jobs.join()

    def shutdown(self) -> None:
        """Stop after the queued images (the service is stopping; what is left is only the shadow's loss)."""
        if self._thread is None:
            return
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _ensure_running(self) -> None:
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)
        except (AttributeError, OSError) as exc:  # not Linux, or not allowed: it still runs, at normal priority
            log.info("shadow scoring runs at normal priority: %s", exc)
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                self._score(job)
            except Exception:  # one image the shadow could not score must not end shadow scoring
                log.exception("shadow scoring of inspection %s failed", job.record.id if job else "?")
                if job is not None:
                    self.metrics.shadow_skipped.labels(job.record.model, "error").inc()
            finally:
                self._jobs.task_done()

    def _score(self, job: _Job) -> None:
        shadow, record = job.shadow, job.record
        result = shadow.scorer.score([job.rgb])
        score = float(result.scores[0])
        cal = shadow.calibration
        shadow_result = ShadowRecord(
            inspection_id=record.id,
            recipe=record.model,
            shadow_version=shadow.version,
            calibration=cal.name if cal else None,
            score=score,
            normalized_score=cal.normalized(score) if cal else None,
            verdict=cal.verdict(score) if cal else None,
            pixel_threshold=shadow.map_threshold,
            preprocessing=shadow.scorer.preprocessing,
            map_file=self.store.shadow_map_file(record, shadow.version),
        )
        if self.store.insert_shadow(shadow_result, result.maps[0]):
            agreement = "agree" if shadow_result.verdict == record.verdict else "disagree"
            self.metrics.shadow_inspections.labels(record.model, agreement).inc()
