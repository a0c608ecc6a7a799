"""What the operator page (service/web/) needs beyond the core API: live push, counters, recent scores, thumbnails.

    GET /v1/events                            server-sent events: `inspection` and `review`, each an Inspection
    GET /v1/summary                           counts by verdict since a time, open reviews, throughput
    GET /v1/scores                            recent raw scores of the served model version (threshold histogram)
    GET /v1/inspections/{id}/thumbnail.jpg    a small JPEG for history strips (camera images can be megapixels)

Why server-sent events and not a WebSocket: the page only listens, SSE is plain HTTP (the same `X-API-Key`
header and `auth.camera` guard as every read, sent by `fetch`) and needs no extra package. `service.server`
ends the streams when the service stops. Counters and scores are read through the store's `StoreReader`, with
read-only connections of its own, so a page load never waits behind the store's lock and the inspection path
never waits behind a count.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

import cv2
from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse

from inspector.data.io import read_image
from inspector.service import auth
from inspector.service.broadcast import Broadcaster
from inspector.service.errors import NotFound
from inspector.service.routers import InspectorDep
from inspector.service.schemas import ErrorBody, IsoTime, RecentScores, ScorePoint, Summary
from inspector.service.store import unix_time

HEARTBEAT_S = 15.0  # a comment line this often lets proxies keep, and the page notice, a stream
THROUGHPUT_WINDOW_S = 300.0

router = APIRouter(tags=["operator page"], dependencies=[auth.camera], responses=auth.RESPONSES)


@router.get(
    "/v1/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`connected` at once (data: the heartbeat period), then `inspection` and `review` "
            "events whose data is an Inspection (JSON); a comment line every 15 s",
        }
    },
)
async def events(request: Request) -> StreamingResponse:
    """Every inspection as it is committed and every review as it is saved, pushed as server-sent events."""
    broadcaster: Broadcaster = request.app.state.events

    async def stream() -> AsyncIterator[str]:
        with broadcaster.subscribe() as queue:
            yield f"event: connected\ndata: {json.dumps({'heartbeat_s': HEARTBEAT_S})}\n\n"  # the stream is live
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    message = ": keep-alive\n\n"
                if message is None:
                    return
                yield message

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold events back
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


# ---- counters and scores ------------------------------------------------------------------------------------


@router.get("/v1/summary", response_model=Summary)
def summary(
    inspector: InspectorDep,
    since: Annotated[IsoTime, Query(description="start of the shift or day (ISO 8601)")],
    model: str | None = None,
) -> Summary:
    start = unix_time(since)
    counts = inspector.reader.summary(start, model, recent_since=time.time() - THROUGHPUT_WINDOW_S)
    return Summary(
        since=datetime.fromtimestamp(start, UTC),
        model=model,
        inspected=sum(counts.verdicts.values()),
        verdicts=counts.verdicts,
        reviewed=counts.reviewed,
        review_open=counts.review_open,
        per_minute=round(counts.recent / (THROUGHPUT_WINDOW_S / 60), 2),
    )


@router.get("/v1/scores", response_model=RecentScores, responses={404: {"model": ErrorBody}})
def scores(
    inspector: InspectorDep,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> RecentScores:
    entry = inspector.registry.get(model)
    recent = inspector.reader.recent_scores(entry.name, entry.version, limit)
    points = [ScorePoint(score=p.score, review=p.review) for p in recent]
    return RecentScores(model=entry.name, model_version=entry.version, points=points)


# ---- thumbnails ---------------------------------------------------------------------------------------------


@router.get(
    "/v1/inspections/{record_id}/thumbnail.jpg",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorBody}},
)
def thumbnail(
    record_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{24}$")],
    inspector: InspectorDep,
    size: Annotated[int, Query(ge=32, le=512, description="longest side in pixels")] = 160,
) -> Response:
    """The uploaded image scaled down (never up) to `size` on its longest side."""
    record = inspector.store.get(record_id)
    path = inspector.store.path(record.image_file) if record else None
    if path is None or not path.is_file():
        raise NotFound(f"no image for inspection {record_id}")
    rgb = read_image(path)
    scale = min(1.0, size / max(rgb.shape[:2]))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return Response(jpeg.tobytes(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})
