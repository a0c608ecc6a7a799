"""The service's shared state, and one inspection end to end: admit, decode, score, judge, store, commit.

Decoding, scoring and judging run on a worker of the `WorkQueue`; writing the files and committing the record
run on its single store thread, so inference never waits for fsync.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from inspector.components.drift import image_statistics
from inspector.service.analysis import Analysis, analyze
from inspector.service.config import Settings
from inspector.service.drift import DriftWatch
from inspector.service.errors import Conflict
from inspector.service.golden_samples import GoldenSets
from inspector.service.images import Upload, decode_upload
from inspector.service.metrics import ServiceMetrics
from inspector.service.queue import WorkQueue, queue_full
from inspector.service.registry import LoadedModel, ModelRegistry
from inspector.service.shadow import ShadowScorer
from inspector.service.store import InspectionRecord, InspectionStore, StoredFiles, StoreReader


@dataclass
class Scored:
    """What a worker hands to the store thread."""

    entry: LoadedModel
    upload: Upload
    analysis: Analysis
    timings_ms: dict[str, float]
    image_stats: dict[str, float] = field(default_factory=dict)  # for drift watch, taken on the worker


class Inspector:
    """The service's shared state, and one inspection end to end: decode, score, judge (on a worker), write
    files and commit the record (on the store thread). `reader` answers the operator page's counters and score
    history on read-only connections of its own."""

    def __init__(
        self, settings: Settings, registry: ModelRegistry, store: InspectionStore, metrics: ServiceMetrics
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.reader = StoreReader(store.root)
        self.metrics = metrics
        self.queue = WorkQueue(settings.workers, settings.queue_size, metrics)
        self.shadow = ShadowScorer(registry, store, metrics)
        self.golden = GoldenSets(settings.golden_dir)
        self.drift = DriftWatch()

    def publish_models(self) -> None:
        self.metrics.set_models(
            [
                (e.name, e.version, e.calibration.name if e.calibration else None, e.resident_mb)
                for e in self.registry.entries.values()
            ]
        )

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
            raise queue_full()
        return entry

    async def inspect(
        self, data: bytes, model: str | None, meta: Mapping[str, str | None], arrived: float
    ) -> InspectionRecord:
        """Admit (or refuse at once), run the two stages, and return the committed record. `meta`: part_id,
        line and camera as the camera sent them."""
        entry = self.admissible(model)
        return await self.queue.run(
            lambda queue_ms: self._score(entry, data, queue_ms), lambda scored: self._persist(scored, meta, arrived)
        )

    def _score(self, entry: LoadedModel, data: bytes, queue_ms: float) -> Scored:
        start = time.perf_counter()
        upload = decode_upload(data, self.settings.max_image_pixels)
        decode_ms = (time.perf_counter() - start) * 1e3
        analysis = analyze(entry.scorer, entry.map_threshold, upload.rgb, self.settings.max_regions)
        timings = {"queue": queue_ms, "decode": decode_ms, **analysis.timings_ms}
        return Scored(entry, upload, analysis, timings, image_statistics(upload.rgb))

    def _persist(self, scored: Scored, meta: Mapping[str, str | None], arrived: float) -> InspectionRecord:
        entry, upload, analysis, cal = scored.entry, scored.upload, scored.analysis, scored.entry.calibration
        created = round(time.time(), 6)  # microseconds: exactly what the API shows and filters on
        record_id = self.store.new_id(created)
        start = time.perf_counter()

        def build(files: StoredFiles | None) -> InspectionRecord:
            now = time.perf_counter()
            timings = {**scored.timings_ms, "store": (now - start) * 1e3, "total": (now - arrived) * 1e3}
            return InspectionRecord(
                id=record_id,
                created=created,
                model=entry.name,
                model_version=entry.version,
                calibrated=cal is not None,
                calibration=cal.name if cal else None,
                verdict=cal.verdict(analysis.score) if cal else None,
                score=analysis.score,
                normalized_score=cal.normalized(analysis.score) if cal else None,
                threshold=cal.image_threshold if cal else None,
                pixel_threshold=entry.map_threshold,
                regions=tuple(analysis.regions),
                width=upload.rgb.shape[1],
                height=upload.rgb.shape[0],
                media_type=upload.media_type,
                preprocessing=entry.scorer.preprocessing,
                timings_ms={k: round(v, 3) for k, v in timings.items()},
                part_id=meta.get("part_id"),
                meas_id=meta.get("meas_id"),
                line=meta.get("line"),
                camera=meta.get("camera"),
                image_file=files.image_file if files else "",
                map_file=files.map_file if files else "",
                bytes=files.nbytes if files else 0,
                image_stats=scored.image_stats or None,
            )

        record = self.store.record(record_id, created, upload.data, upload.suffix, analysis.map, build)
        if record.recorded:
            self.shadow.submit(record, upload.rgb)  # after the commit; never waits, never changes the answer
        else:
            self.metrics.unrecorded.labels(entry.name).inc()
        self.drift.observe(entry, record.verdict, record.score, record.image_stats, created)
        self.metrics.observe_inspection(entry.name, record.verdict, record.timings_ms)
        return record
