"""The record of every inspection: list and filter, one record, its image, heatmap and raw map, and review."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from inspector.components.overlay import overlay
from inspector.data.io import read_image
from inspector.service import auth
from inspector.service.errors import NotFound
from inspector.service.pipeline import Inspector
from inspector.service.routers import ActorDep, AuditDep, InspectorDep
from inspector.service.schemas import ErrorBody, Inspection, InspectionPage, IsoTime, ReviewRequest
from inspector.service.store import InspectionRecord, VerdictFilter, unix_time

router = APIRouter(
    prefix="/v1/inspections",
    tags=["inspections"],
    dependencies=[auth.camera],
    responses={**auth.RESPONSES, 404: {"model": ErrorBody, "description": "no such inspection"}},
)
RecordId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{24}$", description="inspection id")]
IMMUTABLE = {"Cache-Control": "private, max-age=86400"}  # a record's pictures never change


@router.get("", response_model=InspectionPage)
def list_inspections(
    inspector: InspectorDep,
    verdict: Annotated[VerdictFilter | None, Query(description="none: not judged")] = None,
    model: str | None = None,
    reviewed: Annotated[bool | None, Query(description="only reviewed (true) or not yet reviewed (false)")] = None,
    since: Annotated[IsoTime | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[IsoTime | None, Query(description="created before (ISO 8601)")] = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9a-f]{24}$", description="next_cursor of last page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> InspectionPage:
    """Inspections, newest first."""
    items, next_cursor = inspector.store.page(
        model=model,
        verdict=verdict,
        reviewed=reviewed,
        cursor=cursor,
        limit=limit,
        since=unix_time(since),
        until=unix_time(until),
    )
    return InspectionPage(items=[Inspection.from_record(r) for r in items], next_cursor=next_cursor)


@router.get("/{record_id}", response_model=Inspection)
def get_inspection(record_id: RecordId, inspector: InspectorDep) -> Inspection:
    return Inspection.from_record(_record(inspector, record_id))


@router.get("/{record_id}/image", response_class=FileResponse)
def get_image(record_id: RecordId, inspector: InspectorDep) -> FileResponse:
    """The uploaded image, byte for byte."""
    record = _record(inspector, record_id)
    path = _file(inspector, record.image_file)
    return FileResponse(path, media_type=record.media_type, headers=IMMUTABLE)


@router.get("/{record_id}/heatmap.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def get_heatmap(record_id: RecordId, inspector: InspectorDep) -> Response:
    """The map over the image, in original pixels. Colour scale: 0.5x (blue) to 1.5x (red) the pixel
    threshold, the same for every part, so hotter means worse; per image min..max when uncalibrated.
    Rendered on request (a plain `def`: FastAPI runs it in a thread), which keeps PNG encoding off the
    inspect path."""
    png = _render_heatmap(inspector, _record(inspector, record_id))
    return Response(png, media_type="image/png", headers=IMMUTABLE)


@router.get("/{record_id}/map.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def get_map(record_id: RecordId, inspector: InspectorDep) -> Response:
    """The raw map as a 16-bit gray PNG in original pixels: score = value / 65535 * X-Map-Scale."""
    png, scale = _render_map(inspector, _record(inspector, record_id))
    return Response(png, media_type="image/png", headers={**IMMUTABLE, "X-Map-Scale": f"{scale:.6g}"})


@router.post("/{record_id}/review", response_model=Inspection, dependencies=[auth.operator])
def review(
    record_id: RecordId,
    body: ReviewRequest,
    inspector: InspectorDep,
    audit: AuditDep,
    actor: ActorDep,
    request: Request,
) -> Inspection:
    """An operator's verdict (good | defect) and note, kept with the record; a later review replaces it, and
    each is in the audit log (old and new verdict, the note as reason) before the answer is sent.
    `inspector dataset export --reviewed` turns reviewed records into a data set for re-fitting."""
    before = _record(inspector, record_id)
    operator = body.operator or actor.operator
    record = inspector.store.review(record_id, body.verdict, body.note, operator)
    if record is None:
        raise NotFound(f"no inspection {record_id}")
    audit.append(
        "review",
        user=actor.user,
        operator=operator,
        model=record.model,
        subject=record_id,
        old=before.review_verdict,
        new=body.verdict,
        reason=body.note,
    )
    inspection = Inspection.from_record(record)
    request.app.state.events.publish("review", inspection)  # other operator pages update their history
    return inspection


def _record(inspector: Inspector, record_id: str) -> InspectionRecord:
    record = inspector.store.get(record_id)
    if record is None:
        raise NotFound(f"no inspection {record_id}")
    return record


def _file(inspector: Inspector, name: str) -> Path:
    path = inspector.store.path(name)
    if not path.is_file():
        raise NotFound("the files of this inspection were deleted by retention")
    return path


def _full_map(inspector: Inspector, record: InspectionRecord) -> np.ndarray:
    """The stored map in original pixels, with the resize/crop it was made with (the model may have changed)."""
    amap = np.load(_file(inspector, record.map_file)).astype(np.float32)
    return record.preprocessing.map_to_image(amap, (record.height, record.width))


def _render_heatmap(inspector: Inspector, record: InspectionRecord) -> bytes:
    image = read_image(_file(inspector, record.image_file))
    amap = _full_map(inspector, record)
    t = record.pixel_threshold
    vmin, vmax = (0.5 * t, 1.5 * t) if t else (float(amap.min()), float(amap.max()))
    return _png(cv2.cvtColor(overlay(image, amap, vmin, vmax), cv2.COLOR_RGB2BGR))


def _render_map(inspector: Inspector, record: InspectionRecord) -> tuple[bytes, float]:
    amap = _full_map(inspector, record)
    t = record.pixel_threshold
    scale = 2.0 * t if t else max(float(amap.max()), 1e-12)  # calibrated: the threshold is mid-grey
    return _png((np.clip(amap / scale, 0.0, 1.0) * 65535 + 0.5).astype(np.uint16)), scale


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
