"""POST /v1/inspect: one image in, verdict, score, regions and heatmap link out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from inspector.service import auth
from inspector.service.errors import ServiceError, TooLarge, TooSlow
from inspector.service.line import line_result
from inspector.service.routers import InspectorDep, LinksDep
from inspector.service.schemas import ErrorBody, Inspection

router = APIRouter(prefix="/v1", tags=["inspect"])

MULTIPART_SLACK = 64 * 1024  # boundaries, part headers and the small text fields around the file
META_FIELDS = ("part_id", "meas_id", "line", "camera")
_BINARY = {"type": "string", "format": "binary"}
_TEXT = {"type": "string", "maxLength": 128}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image as multipart field `image`, or the raw bytes with Content-Type image/* "
        "(or application/octet-stream). PNG, JPEG, BMP, TIFF, WebP, PGM/PPM; 8 or 16 bit; gray, RGB or RGBA.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": _BINARY, "model": _TEXT, **{k: _TEXT for k in META_FIELDS}},
                }
            },
            "image/*": {"schema": _BINARY},
            "application/octet-stream": {"schema": _BINARY},
        },
    }
}
Text = Annotated[str | None, Query(max_length=128)]


@router.post(
    "/inspect",
    response_model=Inspection,
    dependencies=[auth.camera],
    openapi_extra=IMAGE_BODY,
    responses={
        code: {"model": ErrorBody, "description": text}
        for code, text in (
            (400, "empty body, missing `image` field, or ?model= needed"),
            (401, auth.RESPONSES[401]["description"]),
            (404, "unknown model"),
            (409, "model not calibrated and require_calibration is on"),
            (408, "the upload took longer than upload_timeout_s"),
            (413, "image over max_image_mb or max_image_pixels"),
            (415, "not an image content type"),
            (422, "not a readable image (corrupt, truncated, unsupported)"),
            (503, "queue full, disk below its floor, or still starting; see Retry-After"),
        )
    },
)
async def inspect(
    request: Request,
    inspector: InspectorDep,
    links: LinksDep,
    model: Text = None,
    part_id: Text = None,
    meas_id: Text = None,
    line: Text = None,
    camera: Text = None,
) -> Inspection:
    """Inspect one part. Answered only after the record is committed, so every 200 is in the store, and after
    the result was handed to the line links (PLC, MQTT, webhooks). Without `model`, the recipe the PLC selected
    is used; without `part_id`/`meas_id`, the ids the PLC wrote for the next part."""
    arrived = time.perf_counter()
    selected = links.selected_model  # the PLC's recipe, for a request that names no model
    inspector.admissible(model or selected)  # refuse before reading the body when the answer is known
    try:
        async with asyncio.timeout(inspector.settings.upload_timeout_s):
            data, fields = await read_image(request, inspector.settings.max_image_bytes)
    except TimeoutError:
        limit = inspector.settings.upload_timeout_s
        raise TooSlow(f"the upload did not arrive within {limit:g} s (upload_timeout_s)") from None
    plc_part_id, plc_meas_id = links.take_next_ids()  # meant for this part, whatever the camera sends
    model = model or fields.get("model") or selected
    meta = {"part_id": part_id, "meas_id": meas_id, "line": line, "camera": camera}
    meta = {k: v or fields.get(k) for k, v in meta.items()}
    meta["part_id"] = meta["part_id"] or plc_part_id
    meta["meas_id"] = meta["meas_id"] or plc_meas_id
    record = await inspector.inspect(data, model, meta, arrived)
    links.publish(line_result(record, links))  # hands over only: a dead PLC or broker never delays this answer
    inspection = Inspection.from_record(record)
    request.app.state.events.publish("inspection", inspection)  # the operator page's live view
    return inspection


async def read_image(request: Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """The image bytes (and text form fields) of a multipart or raw upload, never more than `limit` bytes."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        raise TooLarge(_too_large(limit))
    if media_type == "multipart/form-data":
        parser = MultiPartParser(
            request.headers,
            _limited(request.stream(), limit + MULTIPART_SLACK),
            max_files=1,
            max_fields=8,
            max_part_size=4096,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ServiceError(f"malformed multipart body: {exc.message}") from exc
        try:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise ServiceError("multipart body has no file field 'image'")
            _check_type(upload.content_type or "application/octet-stream")
            data = await upload.read()
            fields = {k: v[:128] for k, v in form.items() if isinstance(v, str) and k in ("model", *META_FIELDS)}
        finally:
            await form.close()
    elif media_type.startswith("image/") or media_type == "application/octet-stream":
        data = b"".join([chunk async for chunk in _limited(request.stream(), limit)])
        fields = {}
    else:
        raise ServiceError(
            f"send the image as multipart field 'image' or as a raw image/* body, not {media_type or 'no type'!r}",
            status=415,
            reason="unsupported_type",
        )
    if not data:
        raise ServiceError("empty image: the body holds no bytes")
    if len(data) > limit:
        raise TooLarge(_too_large(limit))
    return data, fields


def _check_type(media_type: str) -> None:
    media_type = media_type.split(";")[0].strip().lower()
    if not (media_type.startswith("image/") or media_type == "application/octet-stream"):
        detail = f"field 'image' has content type {media_type!r}, expected image/*"
        raise ServiceError(detail, status=415, reason="unsupported_type")


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    """Pass chunks through until more than `limit` bytes arrived, then stop reading with 413."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise TooLarge(_too_large(limit))
        yield chunk


def _too_large(limit: int) -> str:
    return f"upload larger than {limit / 1024 / 1024:g} MiB (max_image_mb)"
