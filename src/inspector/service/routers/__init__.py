"""HTTP endpoints, one module per resource; each takes the shared `Inspector` from the app state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from inspector.link.hub import LinkHub
from inspector.service.pipeline import Inspector


def get_inspector(request: Request) -> Inspector:
    return request.app.state.inspector


def get_links(request: Request) -> LinkHub:
    return request.app.state.links


InspectorDep = Annotated[Inspector, Depends(get_inspector)]
LinksDep = Annotated[LinkHub, Depends(get_links)]
