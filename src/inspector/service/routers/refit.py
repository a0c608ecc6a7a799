"""Re-fitting a recipe from its reviewed images in the background, landed as its shadow (see service.refit).

    POST   /v1/models/{name}/refit    start one (one per recipe at a time)
    GET    /v1/refits                 every job, newest first, with stage, percent and elapsed time
    GET    /v1/refits/{id}            one job
    DELETE /v1/refits/{id}            cancel it: what it wrote is removed, the active model is unchanged

Operator key only: a re-fit produces a version the line may be switched to, and a job names who started it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.concurrency import run_in_threadpool

from inspector.service import auth
from inspector.service.refit import RefitManager
from inspector.service.routers import ActorDep
from inspector.service.schemas import ErrorBody, RefitInfo, RefitRequest

router = APIRouter(
    tags=["refit"],
    dependencies=[auth.operator],
    responses={**auth.RESPONSES, 404: {"model": ErrorBody, "description": "no such model or job"}},
)


def get_refits(request: Request) -> RefitManager:
    return request.app.state.refits


RefitsDep = Annotated[RefitManager, Depends(get_refits)]


@router.post(
    "/v1/models/{name}/refit",
    response_model=RefitInfo,
    status_code=202,
    responses={
        409: {"model": ErrorBody, "description": "a re-fit of the model runs, nothing reviewed, or no training data"},
        501: {"model": ErrorBody, "description": "this box has no training stack (torch); names the extra to install"},
    },
)
async def start_refit(
    name: str, refits: RefitsDep, actor: ActorDep, body: Annotated[RefitRequest | None, Body()] = None
) -> RefitInfo:
    """Fit a new version of the recipe in the background on its training images plus the parts operators
    reviewed as good, calibrate it on the reviewed images held out, and land it as the recipe's shadow. The line
    keeps inspecting meanwhile (the fit runs at the lowest priority on one thread)."""
    job = await run_in_threadpool(
        refits.start, name, user=actor.user, operator=actor.operator, reason=body.reason if body else ""
    )
    return RefitInfo.from_job(job)


@router.get("/v1/refits", response_model=list[RefitInfo])
def list_refits(refits: RefitsDep) -> list[RefitInfo]:
    return [RefitInfo.from_job(j) for j in refits.recent()]


@router.get("/v1/refits/{job_id}", response_model=RefitInfo)
def get_refit(job_id: str, refits: RefitsDep) -> RefitInfo:
    return RefitInfo.from_job(refits.get(job_id))


@router.delete(
    "/v1/refits/{job_id}",
    response_model=RefitInfo,
    responses={409: {"model": ErrorBody, "description": "the job has ended or is landing its version"}},
)
def cancel_refit(job_id: str, refits: RefitsDep, actor: ActorDep) -> RefitInfo:
    """Stop the job; it ends `cancelled` once its fit has stopped and what it wrote is removed (poll it)."""
    return RefitInfo.from_job(refits.cancel(job_id, user=actor.user, operator=actor.operator))
