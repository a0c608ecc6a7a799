"""HTTP endpoints, one module per resource; each takes the shared `Inspector` from the app state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from inspector.link.hub import LinkHub
from inspector.service import auth
from inspector.service.audit import AuditLog
from inspector.service.pipeline import Inspector


@dataclass(frozen=True)
class Actor:
    """Who made a change, for the audit log: the role of the request's key and, when it names one, the person."""

    user: str
    operator: str | None


def get_inspector(request: Request) -> Inspector:
    return request.app.state.inspector


def get_links(request: Request) -> LinkHub:
    return request.app.state.links


def get_audit(request: Request) -> AuditLog:
    return request.app.state.audit


def get_actor(
    user: Annotated[str, Depends(auth.caller)],
    x_operator: Annotated[
        str | None, Header(max_length=200, description="who acts (free text), for the audit log")
    ] = None,
) -> Actor:
    return Actor(user, x_operator or None)


InspectorDep = Annotated[Inspector, Depends(get_inspector)]
LinksDep = Annotated[LinkHub, Depends(get_links)]
AuditDep = Annotated[AuditLog, Depends(get_audit)]
ActorDep = Annotated[Actor, Depends(get_actor)]
