"""A recipe's versions: the shadow beside the active one, its disagreements, the golden-sample gate, promotion and
rollback. Promotion and rollback are operator actions, in the audit log before they are acknowledged."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Body, Query
from fastapi.concurrency import run_in_threadpool

from inspector.calibration.gate import GateReport
from inspector.calibration.store import model_fingerprint
from inspector.service import auth
from inspector.service.audit import AuditKind, AuditLog
from inspector.service.errors import Conflict, NotFound
from inspector.service.pipeline import Inspector
from inspector.service.recipes import resolve_model_dir
from inspector.service.registry import LoadedModel
from inspector.service.routers import Actor, ActorDep, AuditDep, InspectorDep
from inspector.service.routers.models import model_info
from inspector.service.routers.shadow import shadow_result
from inspector.service.schemas import (
    Disagreement,
    DisagreementPage,
    ErrorBody,
    GateResult,
    GoldenCheckInfo,
    GoldenSetInfo,
    Inspection,
    ModelInfo,
    RecipeVersions,
    SeedGolden,
    ShadowRequest,
    VerdictPair,
    VersionChange,
    VersionRef,
)

router = APIRouter(
    prefix="/v1/models",
    tags=["versions"],
    dependencies=[auth.camera],
    responses={**auth.RESPONSES, 404: {"model": ErrorBody, "description": "model not loaded, or no shadow"}},
)
Cursor = Annotated[str | None, Query(pattern=r"^[0-9a-f]{24}$", description="next_cursor of the last page")]


@router.get("/{name}/versions", response_model=RecipeVersions)
def get_versions(name: str, inspector: InspectorDep) -> RecipeVersions:
    """The active version, the shadow, the version a rollback returns to, and the golden set."""
    registry = inspector.registry
    active = registry.get(name)
    shadow = registry.shadow(name)
    kept = registry.previous.get(name)
    pointer = registry.pointers.get(name)
    previous = None
    if kept is not None:
        previous = VersionRef(version=kept.version, dir=str(kept.dir), in_memory=True)
    elif pointer is not None and pointer.previous is not None:
        previous = VersionRef(version=_version_of(pointer.previous), dir=str(pointer.previous), in_memory=False)
    return RecipeVersions(
        name=name,
        recipe_number=registry.recipes.index(name) + 1,
        active=model_info(active),
        shadow=model_info(shadow) if shadow else None,
        previous=previous,
        versions_dir=str(registry.versions_dir(name)),
        golden=_golden_info(inspector, name),
    )


@router.put(
    "/{name}/shadow",
    response_model=ModelInfo,
    dependencies=[auth.operator],
    responses={409: {"model": ErrorBody, "description": "the directory is the active version"}, 507: {}},
)
async def load_shadow(
    name: str, body: ShadowRequest, inspector: InspectorDep, audit: AuditDep, actor: ActorDep
) -> ModelInfo:
    """Load and warm another version of the recipe to score in shadow (replacing any shadow): it sees every image
    the active version judges, its verdicts are recorded and never returned to the line."""
    spec = resolve_model_dir(inspector.settings.models_dir, body.dir, None)
    before = inspector.registry.shadow(name)
    entry = await run_in_threadpool(inspector.registry.load_shadow, name, spec.dir)
    await run_in_threadpool(
        partial(
            audit.append,
            "model_shadow",
            user=actor.user,
            operator=actor.operator,
            model=name,
            old=before.version if before else None,
            new=entry.version,
            reason=body.reason or f"shadow loaded from {entry.dir}",
        )
    )
    return model_info(entry)


@router.get("/{name}/shadow", response_model=ModelInfo)
def get_shadow(name: str, inspector: InspectorDep) -> ModelInfo:
    return model_info(_shadow(inspector, name))


@router.delete("/{name}/shadow", response_model=ModelInfo, dependencies=[auth.operator])
def drop_shadow(name: str, inspector: InspectorDep, audit: AuditDep, actor: ActorDep, reason: str = "") -> ModelInfo:
    """Stop scoring in shadow; the results recorded so far stay with their inspections."""
    entry = _shadow(inspector, name)
    inspector.registry.drop_shadow(name)
    audit.append("model_shadow", user=actor.user, operator=actor.operator, model=name, old=entry.version, reason=reason)
    return model_info(entry)


@router.get("/{name}/disagreements", response_model=DisagreementPage)
def disagreements(
    name: str,
    inspector: InspectorDep,
    version: Annotated[str | None, Query(description="a shadow version (default: the current shadow)")] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> DisagreementPage:
    """Where the shadow's verdict differs from the active version's, newest first, with both heatmaps."""
    inspector.registry.get(name)
    version = version or _shadow(inspector, name).version
    counts = inspector.reader.shadow_counts(name, version)
    pairs, next_cursor = inspector.reader.disagreements(name, version, cursor, limit)
    return DisagreementPage(
        model=name,
        shadow_version=version,
        agree=sum(n for (a, s), n in counts.items() if a == s),
        disagree=sum(n for (a, s), n in counts.items() if a != s),
        pairs=[VerdictPair(active=a, shadow=s, count=n) for (a, s), n in sorted(counts.items())],
        items=[Disagreement(inspection=Inspection.from_record(r), shadow=shadow_result(s)) for r, s in pairs],
        next_cursor=next_cursor,
    )


@router.get("/{name}/gate", response_model=GateResult)
async def gate(
    name: str,
    inspector: InspectorDep,
    version: Annotated[str, Query(pattern="^(shadow|active)$", description="which version to check")] = "shadow",
) -> GateResult:
    """The golden-sample gate of the shadow (or the active) version; the promote button runs the same check."""
    entry = _shadow(inspector, name) if version == "shadow" else inspector.registry.get(name)
    report = await run_in_threadpool(inspector.golden.check, entry)
    return _gate_result(entry, report)


@router.post(
    "/{name}/promote",
    response_model=ModelInfo,
    dependencies=[auth.operator],
    responses={409: {"model": ErrorBody, "description": "no shadow, or the golden gate failed (names the images)"}},
)
async def promote(
    name: str,
    inspector: InspectorDep,
    audit: AuditDep,
    actor: ActorDep,
    body: Annotated[VersionChange | None, Body()] = None,
) -> ModelInfo:
    """Make the shadow version the active one, after it passed the golden gate. Atomic: each request is answered
    wholly by the version it was admitted with. In the audit log (old and new version) before the answer; the
    replaced version is kept for a rollback; the recipe keeps its name and PLC number."""
    shadow = _shadow(inspector, name)
    if shadow.calibration is None and inspector.registry.get(name).calibration is not None:
        raise Conflict(
            f"version {shadow.version} of '{name}' has no valid calibration ({shadow.calibration_error}): promoting "
            "it would stop the line's verdicts; calibrate it first"
        )
    report = await run_in_threadpool(inspector.golden.check, shadow)
    if report is not None and not report.passed:
        raise Conflict(
            f"version {shadow.version} of '{name}' not promoted: {report.summary()}: "
            + "; ".join(report.failure_lines())
        )
    gate_note = report.summary() if report else "no golden samples: gate not checked"
    reason = f"{body.reason} ({gate_note})" if body and body.reason else gate_note

    def audit_promote(old: LoadedModel, new: LoadedModel) -> None:
        if new is not shadow:
            raise Conflict(f"the shadow of '{name}' changed while its gate ran; promote again")
        _append(audit, actor, "model_promote", name, old, new, reason)

    entry = await run_in_threadpool(partial(inspector.registry.promote, name, on_promote=audit_promote))
    inspector.publish_models()
    return model_info(entry)


@router.post(
    "/{name}/rollback",
    response_model=ModelInfo,
    dependencies=[auth.operator],
    responses={409: {"model": ErrorBody, "description": "no previous version"}},
)
async def rollback(
    name: str,
    inspector: InspectorDep,
    audit: AuditDep,
    actor: ActorDep,
    body: Annotated[VersionChange | None, Body()] = None,
) -> ModelInfo:
    """Serve the version the last promotion replaced again (no gate: it served before), atomically, in the audit
    log before the answer. Rolling back twice returns to where it started."""

    def audit_rollback(old: LoadedModel, new: LoadedModel) -> None:
        _append(audit, actor, "model_rollback", name, old, new, body.reason if body else "")

    entry = await run_in_threadpool(partial(inspector.registry.rollback, name, on_rollback=audit_rollback))
    inspector.publish_models()
    return model_info(entry)


@router.get("/{name}/golden", response_model=GoldenSetInfo)
def get_golden(name: str, inspector: InspectorDep) -> GoldenSetInfo:
    inspector.registry.get(name)
    return _golden_info(inspector, name)


@router.post("/{name}/golden", response_model=GoldenSetInfo, dependencies=[auth.operator])
def seed_golden(name: str, body: SeedGolden, inspector: InspectorDep) -> GoldenSetInfo:
    """Add reviewed inspections of the recipe to its golden set, labelled by their review (all reviewed ones when
    `inspections` is null); a part reviewed again moves to its new label when seeded again."""
    inspector.registry.get(name)
    if body.inspections is None:
        records = list(inspector.reader.iter_all(model=name, reviewed=True))
    else:
        records = []
        for record_id in body.inspections:
            record = inspector.store.get(record_id)
            if record is None:
                raise NotFound(f"no inspection {record_id}")
            records.append(record)
    try:
        inspector.golden.seed(name, records, inspector.store)
    except FileNotFoundError as exc:
        raise NotFound(f"an inspection's image was deleted by retention: {exc.filename}") from exc
    return _golden_info(inspector, name)


def _shadow(inspector: Inspector, name: str) -> LoadedModel:
    inspector.registry.get(name)
    shadow = inspector.registry.shadow(name)
    if shadow is None:
        raise NotFound(f"'{name}' has no shadow version (PUT /v1/models/{name}/shadow loads one)")
    return shadow


def _append(
    audit: AuditLog, actor: Actor, kind: AuditKind, name: str, old: LoadedModel, new: LoadedModel, why: str
) -> None:
    audit.append(
        kind,
        user=actor.user,
        operator=actor.operator,
        model=name,
        old=old.version,
        new=new.version,
        reason=f"{why} [{old.dir} -> {new.dir}]".strip(),
    )


def _golden_info(inspector: Inspector, name: str) -> GoldenSetInfo:
    samples = inspector.golden.samples(name)
    return GoldenSetInfo(
        dir=str(inspector.golden.folder(name)),
        good=sum(s.label == "good" for s in samples),
        defect=sum(s.label == "defect" for s in samples),
        samples=[s.name for s in samples],
    )


def _gate_result(entry: LoadedModel, report: GateReport | None) -> GateResult:
    if report is None:
        return GateResult(
            model=entry.name,
            version=entry.version,
            checked=False,
            passed=True,
            summary="no golden samples: nothing to check (seed them from reviewed inspections)",
            calibration=entry.calibration.name if entry.calibration else None,
            failures=[],
            checks=[],
        )
    return GateResult(
        model=entry.name,
        version=entry.version,
        checked=True,
        passed=report.passed,
        summary=report.summary(),
        calibration=report.calibration,
        failures=report.failure_lines(),
        checks=[
            GoldenCheckInfo(
                name=c.name,
                expected=c.expected,
                verdict=c.verdict,
                score=c.score,
                normalized_score=c.normalized_score,
                failed=c.failed,
                problem=c.problem,
            )
            for c in report.checks
        ],
    )


def _version_of(model_dir: Path) -> str:
    return model_fingerprint(model_dir)[:12] or "missing"
