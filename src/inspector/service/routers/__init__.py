"""HTTP endpoints, one module per resource; each takes the shared `Inspector` from the app state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from inspector.service.pipeline import Inspector


def get_inspector(request: Request) -> Inspector:
    return request.app.state.inspector


InspectorDep = Annotated[Inspector, Depends(get_inspector)]
