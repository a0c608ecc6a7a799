"""What the operator page (web/) needs beyond the core API: live push, counters, recent scores, thumbnails.

    GET /v1/events                            server-sent events: `inspection` and `review`, each an Inspection
    GET /v1/summary                           counts by verdict since a time, open reviews, throughput
    GET /v1/scores                            recent raw scores of the served model version (threshold histogram)
    GET /v1/inspections/{id}/thumbnail.jpg    a small JPEG for history strips (camera images can be megapixels)

Why server-sent events and not a WebSocket: the page only listens, SSE is plain HTTP (the same `X-API-Key`
header and `auth.camera` guard as every read, sent by `fetch`) and needs no extra package. `run` starts uvicorn
so that a stop ends the streams first: uvicorn lets open responses finish before it stops, and a stream never
finishes by itself, so every stop would otherwise wait out the graceful-shutdown timeout. Counters and scores
are read with a read-only SQLite connection of their own (WAL lets it read beside the writer), so a page load
never waits behind the store's lock and the inspection path never waits behind a count.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from typing import Annotated, Any

import cv2
import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from inspector.data.io import read_image
from inspector.service import auth
from inspector.service.errors import NotFound
from inspector.service.routers import InspectorDep
from inspector.service.schemas import ErrorBody, ReviewVerdict
from inspector.service.store import DB_FILE, InspectionStore, unix_time

HEARTBEAT_S = 15.0  # a comment line this often lets proxies keep, and the page notice, a stream
BACKLOG = 64  # events kept for a slow client; beyond it the oldest are dropped, the publisher never waits
THROUGHPUT_WINDOW_S = 300.0

router = APIRouter(tags=["operator page"], dependencies=[auth.camera], responses=auth.RESPONSES)


class Broadcaster:
    """Fans events out to every open stream. `publish` may be called from any thread (sync routes run in a
    thread pool); each stream has its own queue on its own event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str | None]]] = set()
        self._closed = False

    def publish(self, kind: str, payload: BaseModel) -> None:
        self._send(f"event: {kind}\ndata: {payload.model_dump_json()}\n\n")

    def close(self) -> None:
        """End every stream, and any opened from now on (the service is stopping); pages reconnect later."""
        self._closed = True
        self._send(None)

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[str | None]]:
        stream = (asyncio.get_running_loop(), asyncio.Queue[str | None](BACKLOG))
        with self._lock:
            self._streams.add(stream)
            if self._closed:
                stream[1].put_nowait(None)
        try:
            yield stream[1]
        finally:
            with self._lock:
                self._streams.discard(stream)

    def _send(self, message: str | None) -> None:
        with self._lock:
            streams = list(self._streams)
        for loop, queue in streams:
            with suppress(RuntimeError):  # that stream's loop has just closed
                loop.call_soon_threadsafe(_offer, queue, message)


def _offer(queue: asyncio.Queue[str | None], message: str | None) -> None:
    if queue.full():
        queue.get_nowait()  # the page shows the newest part; an old one it missed is in the history anyway
    queue.put_nowait(message)


class Server(uvicorn.Server):
    """A uvicorn server that ends the app's event streams when it begins to stop."""

    def __init__(self, app: FastAPI, **options: Any) -> None:
        super().__init__(uvicorn.Config(app, **options))
        self.broadcaster: Broadcaster = app.state.events

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.broadcaster.close()
        await super().shutdown(sockets)


def run(app: FastAPI, **options: Any) -> None:
    """`uvicorn.run(app, **options)` for one process, with event streams that end at a stop."""
    server = Server(app, **options)
    with suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it has already handled
        server.run()
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: the app could not start


@router.get("/v1/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "`inspection` and `review` "
                             "events; data is an Inspection (JSON); a comment line every 15 s"}})  # fmt: skip
async def events(request: Request) -> StreamingResponse:
    """Every inspection as it is committed and every review as it is saved, pushed as server-sent events."""
    broadcaster: Broadcaster = request.app.state.events

    async def stream() -> AsyncIterator[str]:
        with broadcaster.subscribe() as queue:
            yield ": connected\n\n"
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    message = ": keep-alive\n\n"
                if message is None:
                    return
                yield message

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold events back
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


# ---- counters and scores ------------------------------------------------------------------------------------


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


@router.get("/v1/summary", response_model=Summary)
def summary(
    inspector: InspectorDep,
    since: Annotated[datetime, Query(description="start of the shift or day (ISO 8601)")],
    model: str | None = None,
) -> Summary:
    model_sql, model_args = ("AND model = ?", (model,)) if model else ("", ())
    start = unix_time(since)
    with _reader(inspector.store) as db:
        counts = dict(db.execute(f"SELECT COALESCE(verdict, 'none'), COUNT(*) FROM inspections WHERE created >= ? "
                                 f"{model_sql} GROUP BY verdict", (start, *model_args)).fetchall())  # fmt: skip
        (reviewed,) = db.execute(f"SELECT COUNT(*) FROM inspections WHERE created >= ? {model_sql} "
                                 "AND review_verdict IS NOT NULL", (start, *model_args)).fetchone()  # fmt: skip
        (review_open,) = db.execute(f"SELECT COUNT(*) FROM inspections WHERE verdict = 'review' {model_sql} "
                                    "AND review_verdict IS NULL", model_args).fetchone()  # fmt: skip
        (recent,) = db.execute(f"SELECT COUNT(*) FROM inspections WHERE created >= ? {model_sql}",
                               (time.time() - THROUGHPUT_WINDOW_S, *model_args)).fetchone()  # fmt: skip
    verdicts = {v: counts.get(v, 0) for v in ("pass", "review", "fail", "none")}
    return Summary(since=datetime.fromtimestamp(start, timezone.utc), model=model, inspected=sum(verdicts.values()),
                   verdicts=verdicts, reviewed=reviewed, review_open=review_open,
                   per_minute=round(recent / (THROUGHPUT_WINDOW_S / 60), 2))  # fmt: skip


@router.get("/v1/scores", response_model=RecentScores, responses={404: {"model": ErrorBody}})
def scores(
    inspector: InspectorDep,
    model: str | None = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> RecentScores:
    entry = inspector.registry.get(model)
    with _reader(inspector.store) as db:
        # Only the newest `4 * limit` rows are looked at, so a fresh re-fit (no row of its version yet) cannot
        # turn this into a scan of months of records.
        rows = db.execute(
            "SELECT json_extract(data, '$.score'), review_verdict FROM (SELECT data, review_verdict FROM inspections "
            "WHERE model = ? ORDER BY id DESC LIMIT ?) WHERE json_extract(data, '$.model_version') = ? LIMIT ?",
            (entry.name, 4 * limit, entry.version, limit),
        ).fetchall()
    points = [ScorePoint(score=score, review=review) for score, review in rows]
    return RecentScores(model=entry.name, model_version=entry.version, points=points)


@contextmanager
def _reader(store: InspectionStore) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"{(store.root / DB_FILE).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        yield db
    finally:
        db.close()


# ---- thumbnails ---------------------------------------------------------------------------------------------


@router.get("/v1/inspections/{record_id}/thumbnail.jpg", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorBody}})  # fmt: skip
def thumbnail(
    record_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{24}$")],
    inspector: InspectorDep,
    size: Annotated[int, Query(ge=32, le=512, description="longest side in pixels")] = 160,
) -> Response:
    """The uploaded image scaled down (never up) to `size` on its longest side."""
    record = inspector.store.get(record_id)
    path = inspector.store.path(record["image_file"]) if record else None
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
