"""Typed request and response bodies: what /docs shows, and what the web UI and line integrators code against."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

Verdict = Literal["pass", "review", "fail"]
ReviewVerdict = Literal["good", "defect"]


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
    note: str = Field("", max_length=2000)
    operator: str | None = Field(None, max_length=200, description="who reviewed (free text)")


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
    line: str | None = None
    camera: str | None = None
    image_url: str
    heatmap_url: str = Field(description="overlay of map on image (PNG, rendered on request)")
    map_url: str = Field(description="raw map as 16-bit PNG in original pixels; X-Map-Scale = score at 65535")
    timings_ms: Timings
    review: Review | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Inspection:
        """A stored record (see service.store) as the API shows it, with links to its pictures."""
        base = f"/v1/inspections/{record['id']}"
        review = None
        if record["review_verdict"]:
            review = Review(verdict=record["review_verdict"], note=record["review_note"] or "",
                            operator=record["review_operator"], reviewed_at=_time(record["reviewed_at"]))  # fmt: skip
        fields = {k: v for k, v in record.items() if k in cls.model_fields}
        urls = {"image_url": f"{base}/image", "heatmap_url": f"{base}/heatmap.png", "map_url": f"{base}/map.png"}
        return cls(**{**fields, **urls, "created": _time(record["created"]), "review": review})


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
    calibrated: bool
    calibration: CalibrationInfo | None
    calibration_error: str | None = Field(description="why the active calibration is not used, if so")


class ActivateCalibration(BaseModel):
    name: str = Field(description="an archived calibration of the model (GET .../calibrations)")


class ReloadRequest(BaseModel):
    model: str | None = Field(None, description="model to reload; all when null")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    models: dict[str, bool] = Field(description="model name -> loaded and warmed up")
    disk_ok: bool = Field(description="free disk above store.min_free_disk_mb")
    detail: str = ""


class ErrorBody(BaseModel):
    detail: str


def _time(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, timezone.utc)
