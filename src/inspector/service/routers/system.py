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
    """Ready only when every model is loaded and warmed up and the store's disk is above its floor. Line links
    are listed with their health; one that is down is named in `detail` but leaves the service ready, and so does
    a model refused at start-up for the memory budget (`models` shows it false) while the others serve."""
    registry = inspector.registry
    models = {name: name in registry.entries for name in [*registry.specs, *registry.refused]}
    disk_ok = inspector.store.disk_ok()
    ready = registry.ready and disk_ok
    if registry.error or not registry.ready:
        detail = registry.error or "loading and warming up models"
    else:
        detail = "" if disk_ok else "store disk below store.min_free_disk_mb"
    health = link_health(links)
    down = [f"link {h.name} down: {h.detail}" for h in health if not h.up]
    detail = "; ".join(filter(None, [detail, *registry.refused.values(), *down]))
    body = Readiness(ready=ready, models=models, disk_ok=disk_ok, links=health, detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(inspector: InspectorDep, links: LinksDep) -> Response:
    """Prometheus text exposition."""
    inspector.publish_store_stats()
    inspector.metrics.set_links(links.health())
    return Response(inspector.metrics.exposition(), media_type=CONTENT_TYPE)
