"""Drift watch: per served recipe, the rolling statistics against the fit-time reference and the alarm."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from inspector.service import auth
from inspector.service.routers import InspectorDep
from inspector.service.schemas import DriftReport, RecipeDrift

router = APIRouter(prefix="/v1/drift", tags=["drift"], dependencies=[auth.camera], responses={**auth.RESPONSES})


@router.get("", response_model=DriftReport)
def drift(
    inspector: InspectorDep,
    series: Annotated[bool, Query(description="include the recent values and checks for plots")] = True,
) -> DriftReport:
    """Each recipe's statistics (pass score, brightness, contrast, sharpness): PSI, KS and rank-sum p of the rolling
    window, the reference and where it came from, the alarm and since when, and the recent series for plots."""
    snapshots = inspector.drift.snapshot(list(inspector.registry.entries.values()), series)
    recipes = [RecipeDrift.from_snapshot(s) for s in snapshots]
    return DriftReport(alarm=any(r.alarm for r in recipes), recipes=recipes)
