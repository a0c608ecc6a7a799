"""The app factory (`create_app(settings)`) and `serve`, which `inspector serve` runs.

Start-up order: the store and its audit log open (a key changed since the last run is logged), the store
deletes files a crash left without a record, FAISS's process-wide thread count is set (once, here: two models in
one process must not change each other's threads), the line links (PLC servers, MQTT, webhooks) open, the HTTP
server starts answering /healthz, models load and warm up in a thread, then /readyz turns ready. A maintenance
task applies retention every `store.maintenance_interval_s`. Shutdown lets admitted inspections finish, commit and
reach the links, then closes the links.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inspector import __version__
from inspector.common.system import cpu_threads
from inspector.components.knn import set_search_threads
from inspector.link.factory import build_sinks
from inspector.link.hub import LinkHub
from inspector.service import server
from inspector.service.audit import AuditLog
from inspector.service.broadcast import Broadcaster
from inspector.service.config import LOOPBACK, ServiceConfigError, Settings
from inspector.service.errors import ServiceError
from inspector.service.line import ServiceControls
from inspector.service.metrics import ServiceMetrics
from inspector.service.openapi import allowed_methods, service_openapi, validation_message
from inspector.service.pipeline import Inspector
from inspector.service.recipes import served_models
from inspector.service.refit import RefitManager
from inspector.service.registry import LoadedModel, ModelRegistry
from inspector.service.routers import (
    audit,
    drift,
    inspect,
    inspections,
    links,
    models,
    operator,
    refit,
    shadow,
    system,
    versions,
)
from inspector.service.security import SecurityHeaders
from inspector.service.store import InspectionStore

log = logging.getLogger("inspector.service")
DEFAULT_WEB_DIR = Path(__file__).parent / "web"  # the operator page, shipped as package data


def create_app(settings: Settings) -> FastAPI:
    """A configured service; models load when the app starts (lifespan), not here."""
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = InspectionStore(settings.store)
        audit_log = app.state.audit = AuditLog(store.root)
        await asyncio.to_thread(
            audit_log.record_key_changes, {"camera": settings.camera_key, "operator": settings.operator_key}
        )
        threads = settings.threads or max(1, cpu_threads(None) // settings.workers)
        set_search_threads(threads)
        registry = ModelRegistry(
            served_models(settings), threads, settings.warmup_runs, settings.model_memory_budget_mb
        )
        inspector = app.state.inspector = Inspector(settings, registry, store, metrics)
        controls = ServiceControls(inspector, audit_log)

        def recipe_selected(old: str | None, new: str | None) -> None:
            audit_log.append("recipe", user="plc", old=old, new=new, reason="selected by the PLC")

        links = app.state.links = LinkHub(build_sinks(settings.links), controls, recipe_selected)
        await asyncio.to_thread(links.start)  # a PLC port in use stops the start, not the first inspection
        refits = app.state.refits = RefitManager(registry, store.root, audit_log)
        await asyncio.to_thread(refits.remove_leftovers)  # of re-fits a crash interrupted
        background = asyncio.create_task(_start_and_maintain(inspector, audit_log))
        try:
            yield
        finally:
            background.cancel()
            controls.stopping = True  # the PLC sees Halted while admitted inspections finish
            await asyncio.to_thread(refits.close)  # a running re-fit is cancelled and removes what it wrote
            await asyncio.to_thread(inspector.queue.shutdown)
            await asyncio.to_thread(inspector.shadow.shutdown)
            await asyncio.to_thread(links.stop)
            store.close()
            audit_log.close()

    app = ServiceApp(
        title="inspector",
        version=__version__,
        lifespan=lifespan,
        description="Line-side visual inspection: POST an image to /v1/inspect, get pass/fail, score, "
        "defect regions and a heatmap. Keys: `X-API-Key` (camera or operator).",
    )
    app.state.settings = settings
    app.state.events = Broadcaster()
    for module in (inspect, inspections, versions, models, shadow, links, system, operator, audit, refit, drift):
        app.include_router(module.router)
    app.add_exception_handler(ServiceError, _service_error(metrics))
    app.add_exception_handler(RequestValidationError, _validation_error(metrics))
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error(metrics))
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    web = settings.web_dir or DEFAULT_WEB_DIR
    if (web / "index.html").is_file():
        app.mount("/", StaticFiles(directory=web, html=True), name="web")
    return app


async def _start_and_maintain(inspector: Inspector, audit: AuditLog) -> None:
    """Clean up after a crash, load and warm the models (each in the audit log, with the version the last run
    served, before it serves), then apply retention periodically. The clean-up runs before any model is loaded,
    so no inspection can be writing files it would take for orphans."""
    store = inspector.store
    removed = await asyncio.to_thread(store.cleanup_orphans)
    if removed:
        log.warning("removed %d files of inspections that were never committed (previous run crashed)", removed)
    try:
        await asyncio.to_thread(inspector.registry.load_all, partial(_audit_load, audit))
    except Exception:
        log.exception("the service cannot become ready")
        return
    inspector.publish_models()
    log.info("ready: %s", ", ".join(inspector.registry.entries))
    while True:
        try:
            deleted = await asyncio.to_thread(store.enforce_retention)
        except Exception:  # a failed pass must not end retention for the months the service runs
            log.exception("retention pass failed; retrying in %s s", store.settings.maintenance_interval_s)
        else:
            if deleted:
                inspector.metrics.retention_deleted.inc(deleted)
                log.info("retention deleted %d inspections", deleted)
        inspector.publish_store_stats()
        await asyncio.sleep(store.settings.maintenance_interval_s)


def _audit_load(audit: AuditLog, entry: LoadedModel) -> None:
    old = audit.last_value(("model_load", "model_reload", "model_promote", "model_rollback"), model=entry.name)
    audit.append("model_load", user="service", model=entry.name, old=old, new=entry.version, reason="service start")


class ServiceApp(FastAPI):
    """FastAPI with the schema as the service behaves (service/openapi.py)."""

    def openapi(self) -> dict[str, Any]:
        return service_openapi(self, keys=self.state.settings.has_keys)


def _validation_error(metrics: ServiceMetrics):
    """422 in the service's one error shape, one line naming each invalid field."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        metrics.errors.labels("invalid_request").inc()
        return JSONResponse({"detail": validation_message(exc)}, status_code=422)

    return handle


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer, except for a method the path does not have: 405 with every method it has in `Allow`.
    (Requests no API route takes reach the web page's static files, which answer 404 or 405 for any path, and
    one route knows only its own methods.)"""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (404, 405):
        allowed = allowed_methods(request.app, request.url.path)
        if exc.status_code == 405 or (allowed and request.method not in allowed):
            headers = {"Allow": ", ".join(allowed or ["GET", "HEAD"])}  # no API route: a static file
            return JSONResponse({"detail": "method not allowed"}, status_code=405, headers=headers)
    return await http_exception_handler(request, exc)


def _service_error(metrics: ServiceMetrics):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        metrics.errors.labels(exc.reason).inc()
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    return handle


def _internal_error(metrics: ServiceMetrics):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels("internal").inc()
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; see the service log"}, status_code=500)

    return handle


class RequestMetrics:
    """Counts requests by method, route template (not the raw path: ids would explode the label set), status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()


def bind_host(settings: Settings) -> str:
    """Where to listen: without any API key, loopback only unless `allow_remote_without_keys`."""
    if settings.has_keys or settings.allow_remote_without_keys or settings.host in LOOPBACK:
        return settings.host
    log.warning(
        "no API keys configured: listening on 127.0.0.1 instead of %s. Set INSPECTOR_CAMERA_KEY and "
        "INSPECTOR_OPERATOR_KEY (or camera_key/operator_key in the config), or allow_remote_without_keys: "
        "true to accept unauthenticated requests from the network.",
        settings.host,
    )
    return "127.0.0.1"


def serve(settings: Settings) -> None:
    """Run the service until interrupted (uvicorn, one process: the models live in this process's memory)."""
    from inspector.models.persistence import read_manifest

    logging.getLogger("inspector").setLevel(settings.log_level.upper())
    specs = served_models(settings)
    for spec in specs:
        read_manifest(spec.dir, verify=False)  # fail now, not after the server started, on a wrong path
    host = bind_host(settings)
    tls = tls_files(settings)
    keys = [role for role, key in (("camera", settings.camera_key), ("operator", settings.operator_key)) if key]
    log.info(
        "inspector %s serving %s on %s://%s:%d; store %s; auth: %s",
        __version__,
        ", ".join(f"{m.name}={m.dir}" for m in specs),
        "https" if tls else "http",
        host,
        settings.port,
        settings.store.dir,
        f"{' and '.join(keys)} key set" if keys else "OFF (no keys)",
    )
    server.run(
        create_app(settings),
        host=host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
        limit_concurrency=settings.max_connections,
        **tls,
    )


def tls_files(settings: Settings) -> dict[str, str]:
    """uvicorn's TLS options, after loading the pair once, so a wrong path, a key that does not fit the certificate
    or a passphrase-protected key is one clear config error before the server starts."""
    if settings.tls_cert is None or settings.tls_key is None:
        return {}
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert, settings.tls_key, password=""
        )
    except (OSError, ssl.SSLError) as exc:
        raise ServiceConfigError(
            f"tls_cert {settings.tls_cert} / tls_key {settings.tls_key} cannot serve HTTPS: {exc}"
        ) from exc
    return {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
