"""Typed request and response bodies: what /docs shows, and what the web UI and line integrators code against."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from inspector.calibration import Verdict
from inspector.service.audit import AuditKind, AuditRecord
from inspector.service.refit import RefitJob, RefitStage, RefitState
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
    recorded: bool = Field(
        default=True, description="false: answered while the store's disk was full, so there is no record or picture"
    )
    image_url: str | None = Field(description="null when not recorded")
    heatmap_url: str | None = Field(
        description="overlay of map on image (PNG, rendered on request); null: not recorded"
    )
    map_url: str | None = Field(
        description="raw map as 16-bit PNG in original pixels; X-Map-Scale = score at 65535; null: not recorded"
    )
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
            recorded=record.recorded,
            image_url=f"{base}/image" if record.recorded else None,
            heatmap_url=f"{base}/heatmap.png" if record.recorded else None,
            map_url=f"{base}/map.png" if record.recorded else None,
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
    # `dir` or `name` (or both) must be given: said in the schema so that clients (and fuzzers) know it.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["dir"], "properties": {"dir": {"type": "string", "minLength": 1}}},
                {"required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}},
            ]
        }
    )

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


class ShadowRequest(BaseModel):
    dir: str = Field(description="the version's model directory: absolute, or relative to models_dir (and inside it)")
    reason: str = Field(default="", max_length=2000, description="why, for the audit log")


class VersionChange(BaseModel):
    reason: str = Field(default="", max_length=2000, description="why, for the audit log")


class VersionRef(BaseModel):
    version: str = Field(description="first 12 hex digits of the model manifest's sha256")
    dir: str
    in_memory: bool = Field(description="loaded: a rollback to it is a swap; otherwise it loads first")


class GoldenSetInfo(BaseModel):
    """A recipe's golden samples: images a version must judge as labelled before it may be promoted."""

    dir: str
    good: int
    defect: int
    samples: list[str] = Field(description="good/NAME and defect/NAME")


class SeedGolden(BaseModel):
    inspections: list[str] | None = Field(
        default=None, description="reviewed inspections of the recipe to add; null: every reviewed one"
    )


class GoldenCheckInfo(BaseModel):
    name: str = Field(description="good/NAME or defect/NAME")
    expected: Verdict
    verdict: Verdict | None = Field(description="the version's verdict; null when the image could not be read")
    score: float | None
    normalized_score: float | None
    failed: bool
    problem: str = Field(description="why it failed, empty when it passed")


class GateResult(BaseModel):
    """The golden-sample gate of one version: passed when no golden image is judged against its label."""

    model: str
    version: str
    checked: bool = Field(description="false: the recipe has no golden samples, so nothing was checked")
    passed: bool
    summary: str
    calibration: str | None
    failures: list[str] = Field(description="one line per failed golden image")
    checks: list[GoldenCheckInfo]


class RecipeVersions(BaseModel):
    """A recipe's versions: the one that serves, the one in shadow, the one a rollback returns to."""

    name: str
    recipe_number: int = Field(description="what the PLC selects (1-based); never changes with a promotion")
    active: ModelInfo
    shadow: ModelInfo | None
    previous: VersionRef | None
    versions_dir: str = Field(description="where new versions of the recipe go by convention")
    golden: GoldenSetInfo


class ShadowResult(BaseModel):
    """How the shadow version judged one inspection; never told to the line."""

    inspection_id: str
    recipe: str
    shadow_version: str
    calibration: str | None
    score: float
    normalized_score: float | None
    verdict: Verdict | None
    heatmap_url: str = Field(description="the shadow's map over the image (PNG), beside the active's heatmap_url")


class VerdictPair(BaseModel):
    active: str = Field(description="pass, review, fail or none (not judged)")
    shadow: str
    count: int


class Disagreement(BaseModel):
    inspection: Inspection
    shadow: ShadowResult


class DisagreementPage(BaseModel):
    """Inspections the active and the shadow version judged differently, newest first, with the counts by
    verdict pair over every inspection the shadow scored."""

    model: str
    shadow_version: str
    agree: int
    disagree: int
    pairs: list[VerdictPair]
    items: list[Disagreement]
    next_cursor: str | None


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


class RefitRequest(BaseModel):
    reason: str = Field(default="", max_length=2000, description="why, for the audit log")


class RefitInfo(BaseModel):
    """One background re-fit of a recipe: from the reviewed images to a new version landed as its shadow."""

    id: str
    model: str = Field(description="the recipe re-fitted")
    state: RefitState
    stage: RefitStage = Field(description="dataset, fit, calibrate, load (as the shadow), done")
    step: str | None = Field(description="the stage's current step as the fit reports it (features, coreset, ...)")
    percent: float = Field(description="of the current stage (or step)")
    elapsed_s: float
    started: datetime
    finished: datetime | None
    user: str = Field(description="role of the key that started it")
    operator: str | None
    reason: str
    message: str = Field(description="how it ended: the new version, or why it failed")
    version: str | None = Field(description="the new version's folder, once landed as the shadow")
    dir: str | None
    counts: dict[str, int] = Field(
        description="train_images, train_reviewed_good, calibration_good, calibration_defect"
    )
    notes: list[str] = Field(description="what the operator should know, e.g. calibrated on good images only")
    stages_s: dict[str, float] = Field(description="seconds after the start at which each stage began")

    @classmethod
    def from_job(cls, job: RefitJob) -> RefitInfo:
        return cls(
            id=job.id,
            model=job.model,
            state=job.state,
            stage=job.stage,
            step=job.step,
            percent=round(job.percent, 1),
            elapsed_s=round(job.elapsed_s, 1),
            started=_time(job.started),
            finished=_time(job.finished) if job.finished is not None else None,
            user=job.user,
            operator=job.operator,
            reason=job.reason,
            message=job.message,
            version=job.version,
            dir=job.dir,
            counts=dict(job.counts),
            notes=list(job.notes),
            stages_s=dict(job.stages_s),
        )


class DriftRuleInfo(BaseModel):
    """The alarm rule (components.drift): a statistic drifts at a check when PSI > psi_alarm and the smaller of
    the KS and rank-sum p-values < alpha on a full window; the alarm rises after raise_after such checks in a row
    and clears after clear_after checks on which no statistic had PSI > psi_alarm with a p-value < clear_alpha."""

    window: int
    bins: int
    psi_alarm: float
    alpha: float
    clear_alpha: float
    raise_after: int
    clear_after: int
    bootstrap: int = Field(description="values taken as the reference where the model directory has none")


class DriftStatistic(BaseModel):
    """One monitored statistic of one recipe: the last check and the recent series for plots."""

    name: str = Field(description="score (pass scores), brightness, contrast or sharpness")
    status: str = Field(description="collecting its reference, filling the window, or checked")
    psi: float | None = Field(description="population stability index of the window against the reference")
    ks_statistic: float | None
    ks_p: float | None = Field(description="two-sample Kolmogorov-Smirnov p-value")
    rank_p: float | None = Field(description="Mann-Whitney rank-sum p-value (a shift of the whole distribution)")
    drifting: bool = Field(description="PSI and KS p both past their limits at the last check")
    window: int = Field(description="values in the rolling window")
    observed: int
    window_mean: float | None
    reference_n: int
    reference_source: str = Field(description="e.g. 'fit: 762 training images' or 'first 200 inspections ...'")
    reference_bootstrapped: bool = Field(description="the reference is the first inspections after load")
    reference_band: list[float] | None = Field(description="the reference's 5th, 50th and 95th percentiles")
    values: list[list[float]] = Field(description="recent [unix time, value]")
    checks: list[list[float]] = Field(description="recent [unix time, PSI, KS p, rank-sum p]")


class RecipeDrift(BaseModel):
    model: str
    model_version: str
    started: datetime = Field(description="when this model version's monitor started")
    alarm: bool
    since: datetime | None = Field(description="when the alarm was raised, or last cleared")
    triggered_by: list[str]
    alarms_raised: int
    rule: DriftRuleInfo
    statistics: dict[str, DriftStatistic]

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> RecipeDrift:
        since = snapshot["since"]
        return cls.model_validate(
            {**snapshot, "started": _time(snapshot["started"]), "since": _time(since) if since is not None else None}
        )


class DriftReport(BaseModel):
    """GET /v1/drift: every served recipe's drift watch."""

    alarm: bool = Field(description="a drift alarm is on for some recipe")
    recipes: list[RecipeDrift]


class ErrorBody(BaseModel):
    detail: str


def _iso_only(value: object) -> object:
    """Refuse a bare number where a time is asked for: pydantic would read it as seconds since 1970, which the
    schema (ISO 8601) does not promise and a typo should not silently become."""
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", value):
        raise ValueError("a time is ISO 8601, e.g. 2026-12-06T06:00:00Z, not a number")
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso_only)]


def _time(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)
