"""The served models: what is loaded, its calibrations, switching calibration, reloading, loading another recipe
and unloading one, all at run time."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Body
from fastapi.concurrency import run_in_threadpool

from inspector.calibration import Calibration, list_calibrations
from inspector.calibration.store import is_stale, model_fingerprint
from inspector.components.knn import NearestNeighbourIndex
from inspector.service import auth
from inspector.service.recipes import resolve_model_dir
from inspector.service.registry import LoadedModel
from inspector.service.routers import ActorDep, AuditDep, InspectorDep
from inspector.service.schemas import (
    ActivateCalibration,
    CalibrationInfo,
    ErrorBody,
    LoadModelRequest,
    ModelInfo,
    ReloadRequest,
)

router = APIRouter(
    prefix="/v1/models",
    tags=["models"],
    dependencies=[auth.camera],
    responses={**auth.RESPONSES, 404: {"model": ErrorBody, "description": "model not loaded"}},
)


@router.get("", response_model=list[ModelInfo])
def list_models(inspector: InspectorDep) -> list[ModelInfo]:
    return [model_info(e) for e in inspector.registry.entries.values()]


@router.post(
    "",
    response_model=ModelInfo,
    status_code=201,
    dependencies=[auth.operator],
    responses={
        400: {"model": ErrorBody, "description": "directory outside models_dir or invalid name"},
        409: {"model": ErrorBody, "description": "a model of that name is loaded"},
        507: {"model": ErrorBody, "description": "the model would take the loaded models over the memory budget"},
    },
)
async def load_model(body: LoadModelRequest, inspector: InspectorDep, audit: AuditDep, actor: ActorDep) -> ModelInfo:
    """Load, warm up and serve another model as a new recipe (the next recipe number), without a restart. Refused
    before loading when its estimated size would exceed `model_memory_budget_mb`; the load is in the audit log
    before it serves."""
    spec = resolve_model_dir(inspector.settings.models_dir, body.dir, body.name)

    def audit_load(entry: LoadedModel) -> None:
        audit.append(
            "model_load",
            user=actor.user,
            operator=actor.operator,
            model=entry.name,
            new=entry.version,
            reason=body.reason or f"loaded from {entry.dir}",
        )

    entry = await run_in_threadpool(inspector.registry.add, spec, audit_load)
    inspector.publish_models()
    return model_info(entry)


@router.delete(
    "/{name}",
    response_model=ModelInfo,
    dependencies=[auth.operator],
    responses={409: {"model": ErrorBody, "description": "the model is being reloaded"}},
)
def unload_model(name: str, inspector: InspectorDep, audit: AuditDep, actor: ActorDep, reason: str = "") -> ModelInfo:
    """Stop serving a model: new requests naming it get 404, requests already admitted finish on it. Its recipe
    number stays unused until a restart, so the PLC's numbers of the other models do not move."""
    entry = inspector.registry.remove(name)
    audit.append("model_unload", user=actor.user, operator=actor.operator, model=name, old=entry.version, reason=reason)
    inspector.publish_models()
    return model_info(entry)


@router.get("/{name}", response_model=ModelInfo)
def get_model(name: str, inspector: InspectorDep) -> ModelInfo:
    return model_info(inspector.registry.get(name))


@router.get("/{name}/calibrations", response_model=list[CalibrationInfo])
def get_calibrations(name: str, inspector: InspectorDep) -> list[CalibrationInfo]:
    """Every calibration made for the model, oldest first; `stale` ones belong to an earlier fit."""
    entry = inspector.registry.get(name)
    current = model_fingerprint(entry.dir)
    active = entry.calibration.name if entry.calibration else None
    return [calibration_info(c, c.name == active, is_stale(c, current)) for c in list_calibrations(entry.dir)]


@router.put(
    "/{name}/calibration",
    response_model=ModelInfo,
    dependencies=[auth.operator],
    responses={409: {"model": ErrorBody, "description": "calibration is stale"}},
)
def activate(
    name: str, body: ActivateCalibration, inspector: InspectorDep, audit: AuditDep, actor: ActorDep
) -> ModelInfo:
    """Make an archived calibration the active one; the next inspection is judged by it (no restart). The switch
    is in the audit log before the answer is sent."""
    before = inspector.registry.get(name).calibration
    entry = inspector.registry.activate(name, body.name)
    audit.append(
        "calibration",
        user=actor.user,
        operator=actor.operator,
        model=name,
        old=before.name if before else None,
        new=body.name,
        reason=body.reason,
    )
    inspector.publish_models()
    return model_info(entry)


@router.post(
    "/reload",
    response_model=list[ModelInfo],
    dependencies=[auth.operator],
    responses={409: {"model": ErrorBody, "description": "reload failed or already running"}},
)
async def reload(
    inspector: InspectorDep,
    audit: AuditDep,
    actor: ActorDep,
    body: Annotated[ReloadRequest | None, Body()] = None,
) -> list[ModelInfo]:
    """Load the model directory again (after a re-fit or calibrate), warm it up and swap it in. Requests keep
    being served by the old model meanwhile and in-flight ones finish on it; a failed load changes nothing.
    Each model swapped is in the audit log (old and new version) before the answer is sent."""
    names = [body.model] if body and body.model else list(inspector.registry.specs)
    entries = []
    for name in names:
        before = inspector.registry.get(name).version
        entry = await run_in_threadpool(inspector.registry.reload, name)
        await run_in_threadpool(
            partial(
                audit.append,
                "model_reload",
                user=actor.user,
                operator=actor.operator,
                model=name,
                old=before,
                new=entry.version,
                reason=body.reason if body else "",
            )
        )
        entries.append(entry)
    inspector.publish_models()
    return [model_info(e) for e in entries]


def calibration_info(c: Calibration, active: bool, stale: bool = False) -> CalibrationInfo:
    return CalibrationInfo(
        name=c.name,
        rule=c.rule,
        image_threshold=c.image_threshold,
        pixel_threshold=c.pixel_threshold,
        review_band=c.review_band,
        created=c.created,
        active=active,
        stale=stale,
    )


def model_info(e: LoadedModel) -> ModelInfo:
    scorer = e.scorer
    index = getattr(scorer, "index", None)  # PatchCore's FAISS index; other kinds search nothing
    return ModelInfo(
        name=e.name,
        kind=scorer.kind,
        version=e.version,
        dir=str(e.dir),
        input_size=scorer.preprocessing.input_size,
        fitted_at=scorer.fit_info.get("fitted_at"),
        category=scorer.data_info.get("category"),
        loaded_at=e.loaded_at,
        runtime=scorer.runtime,
        provider=scorer.provider,
        search_on_gpu=index.on_gpu if isinstance(index, NearestNeighbourIndex) else None,
        calibrated=e.calibration is not None,
        calibration=calibration_info(e.calibration, True) if e.calibration else None,
        calibration_error=e.calibration_error,
        resident_mb=round(e.resident_mb, 1),
        estimated_mb=round(e.estimated_mb, 1),
    )
