"""Liveness, readiness and metrics: for the line PC's watchdog, a load balancer and Prometheus (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from inspector.service.metrics import CONTENT_TYPE
from inspector.service.routers import InspectorDep, LinksDep
from inspector.service.routers.links import link_health
from inspector.service.schemas import Health, Readiness

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and answering."""
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(inspector: InspectorDep, links: LinksDep) -> JSONResponse:
    """Ready when every model is loaded and warmed up (and, with `store.when_full: refuse`, the store's disk is
    above its floor). Named in `detail` while the service stays ready: a line link that is down, a model refused at
    start-up for the memory budget or because it could not be loaded (a damaged file; `models` shows it false)
    while the others serve, inspections answered without a record (disk full), and a drift alarm: the line can
    still inspect, a person should look."""
    registry, store = inspector.registry, inspector.store
    models = {name: name in registry.entries for name in [*registry.specs, *registry.refused]}
    disk_ok = store.disk_ok()
    refusing = store.settings.when_full == "refuse" and not disk_ok
    ready = registry.ready and not refusing
    if registry.error or not registry.ready:
        detail = registry.error or "loading and warming up models"
    else:
        detail = "store disk below store.min_free_disk_mb: inspections are refused" if refusing else ""
    health = link_health(links)
    down = [f"link {h.name} down: {h.detail}" for h in health if not h.up]
    drifting = [f"drift alarm on {name}: {text}" for name, text in inspector.drift.alarms().items()]
    refused = (e.detail for e in registry.refused.values())
    detail = "; ".join(filter(None, [detail, *refused, store.recording.problem, *down, *drifting]))
    body = Readiness(ready=ready, models=models, disk_ok=disk_ok, links=health, detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(inspector: InspectorDep, links: LinksDep) -> Response:
    """Prometheus text exposition."""
    inspector.publish_store_stats()
    inspector.metrics.set_links(links.health())
    inspector.metrics.set_drift(inspector.drift.snapshot(list(inspector.registry.entries.values()), series=False))
    return Response(inspector.metrics.exposition(), media_type=CONTENT_TYPE)
