"""The audit log: every change that altered what the line is told, newest first, as pages or one CSV file.

Operator key only: the log names who changed what, which a camera has no need to read.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from inspector.service import auth
from inspector.service.audit import AuditKind, write_csv
from inspector.service.routers import AuditDep
from inspector.service.schemas import AuditEntry, AuditPage, IsoTime
from inspector.service.store import unix_time

router = APIRouter(tags=["audit"], dependencies=[auth.operator], responses=auth.RESPONSES)
Since = Annotated[IsoTime | None, Query(description="at or after (ISO 8601)")]


@router.get("/v1/audit", response_model=AuditPage)
def audit_page(
    audit: AuditDep,
    since: Since = None,
    kind: AuditKind | None = None,
    model: str | None = None,
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="next_cursor of the last page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AuditPage:
    """Audit entries, newest first."""
    items, next_cursor = audit.page(kind=kind, model=model, since=unix_time(since), cursor=cursor, limit=limit)
    return AuditPage(items=[AuditEntry.from_record(r) for r in items], next_cursor=next_cursor)


@router.get("/v1/audit.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def audit_csv(
    audit: AuditDep, since: Since = None, kind: AuditKind | None = None, model: str | None = None
) -> Response:
    """Every matching entry as CSV (header row; times ISO 8601 UTC; a key's value is its salted fingerprint)."""
    out = io.StringIO()
    write_csv(audit.iter_all(kind=kind, model=model, since=unix_time(since)), out)
    name = f"audit-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
