"""Typed request and response bodies: what /docs shows, and what the web UI and line integrators code against."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from inspector.calibration import Verdict
from inspector.service.audit import AuditKind, AuditRecord
from inspector.service.store import InspectionRecord, ReviewVerdict


class Region(BaseModel):
    """One connected area of the anomaly map above the pixel threshold, in original image pixels."""

    x: int = Field(description="left edge")
    y: int = Field(description="top edge")
    width: int
    height: int
    area: int = Field(description="pixels above the threshold")
    peak: float = Field(description="highest raw map score inside the region")


class Timings(BaseModel):
    """Milliseconds per stage; `total` runs from the request's arrival to the record being written."""

    queue: float = Field(description="waiting for a free worker")
    decode: float
    preprocess: float
    features: float
    search: float
    postprocess: float = Field(description="map smoothing, verdict and regions")
    store: float = Field(description="writing image and map files (fsync)")
    total: float


class Review(BaseModel):
    verdict: ReviewVerdict
    note: str = ""
    operator: str | None = None
    reviewed_at: datetime


class ReviewRequest(BaseModel):
    """An operator's judgement of one inspection; stored with the record, later exported for re-fitting."""

    verdict: ReviewVerdict
    note: str = Field(default="", max_length=2000)
    operator: str | None = Field(default=None, max_length=200, description="who reviewed (free text)")


class Inspection(BaseModel):
    """One inspected part: the answer to POST /v1/inspect, and the stored record."""

    id: str
    created: datetime
    model: str
    model_version: str = Field(description="first 12 hex digits of the model manifest's sha256")
    calibrated: bool = Field(description="false: the model had no valid calibration, so verdict is null")
    calibration: str | None = Field(description="name of the calibration that judged this part")
    verdict: Verdict | None = Field(description="null when not calibrated: treat as 'not judged'")
    score: float = Field(description="raw image score of the model")
    normalized_score: float | None = Field(description="score / threshold: 1.0 is the threshold")
    threshold: float | None = Field(description="image threshold of the calibration")
    pixel_threshold: float | None = Field(description="map threshold used for regions (image threshold if unset)")
    regions: list[Region]
    width: int = Field(description="original image width")
    height: int = Field(description="original image height")
    part_id: str | None = None
    meas_id: str | None = Field(default=None, description="measurement id (from the camera or the PLC)")
    line: str | None = None
    camera: str | None = None
    image_url: str
    heatmap_url: str = Field(description="overlay of map on image (PNG, rendered on request)")
    map_url: str = Field(description="raw map as 16-bit PNG in original pixels; X-Map-Scale = score at 65535")
    timings_ms: Timings
    review: Review | None = None

    @classmethod
    def from_record(cls, record: InspectionRecord) -> Inspection:
        """A stored record (see service.store) as the API shows it, with links to its pictures."""
        base = f"/v1/inspections/{record.id}"
        review = None
        if record.review_verdict:
            assert record.reviewed_at is not None  # saved with every review
            review = Review(
                verdict=record.review_verdict,
                note=record.review_note or "",
                operator=record.review_operator,
                reviewed_at=_time(record.reviewed_at),
            )
        return cls(
            id=record.id,
            created=_time(record.created),
            model=record.model,
            model_version=record.model_version,
            calibrated=record.calibrated,
            calibration=record.calibration,
            verdict=record.verdict,
            score=record.score,
            normalized_score=record.normalized_score,
            threshold=record.threshold,
            pixel_threshold=record.pixel_threshold,
            regions=[Region(**asdict(r)) for r in record.regions],
            width=record.width,
            height=record.height,
            part_id=record.part_id,
            meas_id=record.meas_id,
            line=record.line,
            camera=record.camera,
            image_url=f"{base}/image",
            heatmap_url=f"{base}/heatmap.png",
            map_url=f"{base}/map.png",
            timings_ms=Timings.model_validate(record.timings_ms),
            review=review,
        )


class InspectionPage(BaseModel):
    """Newest first; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    items: list[Inspection]
    next_cursor: str | None


class CalibrationInfo(BaseModel):
    name: str
    rule: str
    image_threshold: float
    pixel_threshold: float | None
    review_band: tuple[float, float] | None
    created: str
    active: bool
    stale: bool = Field(description="made for an earlier fit of the model: cannot be activated")


class ModelInfo(BaseModel):
    name: str
    kind: str
    version: str
    dir: str
    input_size: tuple[int, int]
    fitted_at: str | None
    category: str | None
    loaded_at: datetime
    runtime: str = Field(
        description="what runs the network, with its execution provider: onnxruntime/CPUExecutionProvider"
    )
    provider: str | None = Field(description="onnxruntime execution provider (CPU, CUDA or TensorRT)")
    search_on_gpu: bool | None = Field(description="PatchCore: the FAISS search runs on a GPU; null for other kinds")
    calibrated: bool
    calibration: CalibrationInfo | None
    calibration_error: str | None = Field(description="why the active calibration is not used, if so")
    resident_mb: float = Field(description="MiB the process grew by while loading and warming the model")
    estimated_mb: float = Field(
        description="MiB its files take; the memory budget counts the larger of this and resident_mb"
    )


class ActivateCalibration(BaseModel):
    name: str = Field(description="an archived calibration of the model (GET .../calibrations)")
    reason: str = Field(default="", max_length=2000, description="why, for the audit log")


class LoadModelRequest(BaseModel):
    dir: str | None = Field(
        default=None, description="model directory: absolute, or relative to models_dir (and inside it)"
    )
    name: str | None = Field(
        default=None, description="recipe name (default: the folder name); alone, the folder of models_dir to load"
    )
    reason: str = Field(default="", max_length=2000, description="why, for the audit log")


class ReloadRequest(BaseModel):
    model: str | None = Field(default=None, description="model to reload; all when null")
    reason: str = Field(default="", max_length=2000, description="why, for the audit log")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class LinkHealth(BaseModel):
    """One line link (PLC server, MQTT broker, webhook): a link that is down never fails an inspection."""

    name: str = Field(description="the configured URL, credentials removed")
    kind: Literal["modbus", "opcua", "mqtt", "webhook"]
    up: bool = Field(description="listening (servers) or connected and delivering (clients)")
    detail: str
    published: int = Field(description="results handed to the link since start")
    failed: int = Field(description="results the link could not deliver (dropped or refused)")
    clients: int | None = Field(default=None, description="servers: connected clients")


class Readiness(BaseModel):
    ready: bool
    models: dict[str, bool] = Field(description="model name -> loaded and warmed up")
    disk_ok: bool = Field(description="free disk above store.min_free_disk_mb")
    links: list[LinkHealth] = Field(
        default_factory=list,
        description="line links; one that is down is reported here but never makes the service unready",
    )
    detail: str = ""


class Summary(BaseModel):
    """Counters for a shift or a day."""

    since: datetime
    model: str | None
    inspected: int
    verdicts: dict[str, int] = Field(description="pass, review, fail and none (not judged), always all four")
    reviewed: int = Field(description="of those inspected since, how many an operator reviewed")
    review_open: int = Field(description="verdict review and not yet reviewed, at any time: the review queue")
    per_minute: float = Field(description="inspections per minute over the last 5 minutes")


class ScorePoint(BaseModel):
    score: float
    review: ReviewVerdict | None


class RecentScores(BaseModel):
    """Raw image scores of the newest inspections by the model version now served, newest first; raw, so that
    any calibration's threshold can be drawn over them."""

    model: str
    model_version: str
    points: list[ScorePoint]


class AuditEntry(BaseModel):
    """One change that altered what the line is told, as the audit log keeps it (append-only)."""

    id: int = Field(description="grows with every entry")
    created: datetime
    kind: AuditKind
    user: str = Field(
        description="role of the key that authorised it (operator, camera; none without keys), plc or "
        "opcua operator for line-link changes, service for start-up"
    )
    operator: str | None = Field(description="the person, when the request named one (X-Operator or body)")
    model: str | None
    subject: str | None = Field(description="what changed besides the model: an inspection id, a key's role")
    old: str | None = Field(description="value before (a key: its salted fingerprint, never the key)")
    new: str | None = Field(description="value after")
    reason: str

    @classmethod
    def from_record(cls, record: AuditRecord) -> AuditEntry:
        return cls(**{**asdict(record), "created": _time(record.created)})


class AuditPage(BaseModel):
    """Newest first; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    items: list[AuditEntry]
    next_cursor: int | None


class ErrorBody(BaseModel):
    detail: str


def _time(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)
