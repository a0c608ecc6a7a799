"""What shadow versions said about a recorded inspection, and the shadow's heatmap beside the active one's."""

from __future__ import annotations

from typing import Annotated

import cv2
import numpy as np
from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import Response

from inspector.components.overlay import overlay
from inspector.data.io import read_image
from inspector.service import auth
from inspector.service.errors import NotFound
from inspector.service.routers import InspectorDep
from inspector.service.schemas import ErrorBody, ShadowResult
from inspector.service.store import ShadowRecord

router = APIRouter(
    prefix="/v1/inspections",
    tags=["inspections"],
    dependencies=[auth.camera],
    responses={**auth.RESPONSES, 404: {"model": ErrorBody, "description": "no such inspection or shadow result"}},
)
RecordId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{24}$", description="inspection id")]
Version = Annotated[str, PathParam(pattern=r"^[0-9a-f]{1,64}$", description="shadow version")]
IMMUTABLE = {"Cache-Control": "private, max-age=86400"}


@router.get("/{record_id}/shadow", response_model=list[ShadowResult])
def get_shadow_results(record_id: RecordId, inspector: InspectorDep) -> list[ShadowResult]:
    """How each shadow version judged this inspection (empty when no shadow scored it)."""
    if inspector.store.get(record_id) is None:
        raise NotFound(f"no inspection {record_id}")
    return [shadow_result(s) for s in inspector.store.shadow_results(record_id)]


@router.get(
    "/{record_id}/shadow/{version}/heatmap.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def get_shadow_heatmap(record_id: RecordId, version: Version, inspector: InspectorDep) -> Response:
    """The shadow version's map over the image, on the same colour scale as the active heatmap (0.5x to 1.5x the
    shadow's pixel threshold), so the two can be compared side by side."""
    record = inspector.store.get(record_id)
    shadow = next((s for s in inspector.store.shadow_results(record_id) if s.shadow_version == version), None)
    if record is None or shadow is None:
        raise NotFound(f"no shadow result of version {version} for inspection {record_id}")
    image_path, map_path = inspector.store.path(record.image_file), inspector.store.path(shadow.map_file)
    if not image_path.is_file() or not map_path.is_file():
        raise NotFound("the files of this inspection were deleted by retention")
    image = read_image(image_path)
    amap = shadow.preprocessing.map_to_image(np.load(map_path).astype(np.float32), (record.height, record.width))
    t = shadow.pixel_threshold
    vmin, vmax = (0.5 * t, 1.5 * t) if t else (float(amap.min()), float(amap.max()))
    ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(image, amap, vmin, vmax), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return Response(png.tobytes(), media_type="image/png", headers=IMMUTABLE)


def shadow_result(s: ShadowRecord) -> ShadowResult:
    return ShadowResult(
        inspection_id=s.inspection_id,
        recipe=s.recipe,
        shadow_version=s.shadow_version,
        calibration=s.calibration,
        score=s.score,
        normalized_score=s.normalized_score,
        verdict=s.verdict,
        heatmap_url=f"/v1/inspections/{s.inspection_id}/shadow/{s.shadow_version}/heatmap.png",
    )
