"""Prometheus metrics: what a line engineer graphs and alerts on (verdict rates, stage latency, queue, errors).

Each app gets its own registry, so several apps in one process (tests) never share or clash on metrics.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from inspector.link.sink import SinkHealth

# Seconds; dense around a line's takt time (tens to hundreds of milliseconds).
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inspections = Counter(
            "inspector_inspections",
            "Inspections recorded, by model and verdict ('none' when uncalibrated)",
            ["model", "verdict"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "inspector_stage_seconds", "Time per stage of an inspection", ["stage"], buckets=BUCKETS, registry=r
        )
        self.requests = Counter(
            "inspector_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.errors = Counter(
            "inspector_errors", "Requests answered with an error, by reason (queue_full, ...)", ["reason"], registry=r
        )
        self.queue_depth = Gauge("inspector_queue_depth", "Admitted inspections waiting for a worker", registry=r)
        self.in_flight = Gauge("inspector_in_flight", "Admitted inspections not yet answered", registry=r)
        self.store_records = Gauge("inspector_store_records", "Inspection records in the store", registry=r)
        self.store_bytes = Gauge("inspector_store_bytes", "Bytes of stored images and maps", registry=r)
        self.retention_deleted = Counter("inspector_retention_deleted", "Records deleted by retention", registry=r)
        self.unrecorded = Counter(
            "inspector_unrecorded_inspections",
            "Inspections answered without a record (disk below its floor or full), by model",
            ["model"],
            registry=r,
        )
        self.link_up = Gauge(
            "inspector_link_up", "Line link listening or connected (1) or down (0)", ["link", "kind"], registry=r
        )
        self.link_published = Gauge(
            "inspector_link_published", "Results handed to the line link since start", ["link", "kind"], registry=r
        )
        self.link_failed = Gauge(
            "inspector_link_failed", "Results the line link could not deliver since start", ["link", "kind"], registry=r
        )
        self.link_clients = Gauge(
            "inspector_link_clients", "Clients connected to a PLC server link", ["link", "kind"], registry=r
        )
        self.model_info = Gauge(
            "inspector_model_info", "Loaded models (value 1)", ["model", "version", "calibration"], registry=r
        )
        self.model_resident_bytes = Gauge(
            "inspector_model_resident_bytes",
            "Resident memory a model took when it loaded (RSS growth across load and warm-up)",
            ["model"],
            registry=r,
        )
        self.shadow_inspections = Counter(
            "inspector_shadow_inspections",
            "Inspections a recipe's shadow version scored, by whether its verdict agreed with the active one's",
            ["model", "agreement"],
            registry=r,
        )
        self.shadow_skipped = Counter(
            "inspector_shadow_skipped",
            "Inspections the shadow version did not score: it fell behind (queue full) or failed (error)",
            ["model", "reason"],
            registry=r,
        )
        self.drift_alarm = Gauge(
            "inspector_drift_alarm", "Drift alarm on (1) or off (0), per recipe", ["model"], registry=r
        )
        self.drift_psi = Gauge(
            "inspector_drift_psi",
            "Population stability index of the rolling window against the reference",
            ["model", "statistic"],
            registry=r,
        )
        self.drift_ks_p = Gauge(
            "inspector_drift_ks_pvalue",
            "Two-sample Kolmogorov-Smirnov p-value of the rolling window against the reference",
            ["model", "statistic"],
            registry=r,
        )

    def set_drift(self, recipes: list[dict[str, Any]]) -> None:
        """Drift watch as read at scrape time (service.drift snapshots), replacing what was shown before."""
        for gauge in (self.drift_alarm, self.drift_psi, self.drift_ks_p):
            gauge.clear()
        for recipe in recipes:
            self.drift_alarm.labels(recipe["model"]).set(1 if recipe["alarm"] else 0)
            for name, stat in recipe["statistics"].items():
                if stat["psi"] is not None:
                    self.drift_psi.labels(recipe["model"], name).set(stat["psi"])
                    self.drift_ks_p.labels(recipe["model"], name).set(stat["ks_p"])

    def set_links(self, links: list[SinkHealth]) -> None:
        """The line links' state as read at scrape time (their counters live in the sinks)."""
        for h in links:
            self.link_up.labels(h.name, h.kind).set(1 if h.up else 0)
            self.link_published.labels(h.name, h.kind).set(h.published)
            self.link_failed.labels(h.name, h.kind).set(h.failed)
            if h.clients is not None:
                self.link_clients.labels(h.name, h.kind).set(h.clients)

    def observe_inspection(self, model: str, verdict: str | None, timings_ms: dict[str, float]) -> None:
        self.inspections.labels(model, verdict or "none").inc()
        for stage, ms in timings_ms.items():
            self.stage_seconds.labels(stage).observe(ms / 1e3)

    def set_models(self, models: list[tuple[str, str, str | None, float]]) -> None:
        """(name, version, calibration, resident MiB) of every loaded model, replacing what was shown before."""
        self.model_info.clear()
        self.model_resident_bytes.clear()
        for name, version, calibration, resident_mb in models:
            self.model_info.labels(name, version, calibration or "none").set(1)
            self.model_resident_bytes.labels(name).set(round(resident_mb * 1024 * 1024))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
