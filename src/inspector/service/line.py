"""The service as the line link sees it: committed records as `LineResult`s, and the `LineControls` a PLC uses.

The link package knows nothing of the service; this module is the one place that translates between them.
"""

from __future__ import annotations

from inspector.link.hub import LinkHub
from inspector.link.result import LineResult, LineStatus, MachineState, largest_first
from inspector.service.audit import AuditLog
from inspector.service.auth import Role, role_of
from inspector.service.pipeline import Inspector
from inspector.service.store import InspectionRecord

INFERENCE_STAGES = ("decode", "preprocess", "features", "search", "postprocess")


def line_result(record: InspectionRecord, hub: LinkHub) -> LineResult:
    """A committed record as the line sees it (the hub numbers it when it publishes)."""
    timings = record.timings_ms
    return LineResult(
        sequence=0,
        inspection_id=record.id,
        created=record.created,
        model=record.model,
        recipe=hub.recipe_number(record.model),
        model_version=record.model_version,
        verdict=record.verdict,
        score=record.score,
        normalized_score=record.normalized_score,
        threshold=record.threshold,
        regions=largest_first(record.regions),
        width=record.width,
        height=record.height,
        part_id=record.part_id,
        meas_id=record.meas_id,
        line=record.line,
        camera=record.camera,
        inference_ms=round(sum(timings.get(stage, 0.0) for stage in INFERENCE_STAGES), 3),
        total_ms=timings.get("total", 0.0),
        timings_ms=dict(timings),
    )


def band_text(band: tuple[float, float] | None) -> str:
    """A review band as the audit log shows it (normalised units)."""
    return "none" if band is None else f"{band[0]:g}..{band[1]:g}"


class ServiceControls:
    """`LineControls` over the running service: its state for the PLC, and the review band a PLC may change."""

    def __init__(self, inspector: Inspector, audit: AuditLog) -> None:
        self.inspector = inspector
        self.audit = audit
        self.stopping = False

    def line_status(self) -> LineStatus:
        registry, store = self.inspector.registry, self.inspector.store
        refusing = store.settings.when_full == "refuse" and not store.disk_ok()  # else it inspects unrecorded
        error = registry.error or ("store disk below store.min_free_disk_mb" if refusing else None)
        state: MachineState
        if self.stopping:
            state = "Halted"
        elif error:
            state = "Error"
        else:
            state = "Operational" if registry.ready else "Preoperational"
        return LineStatus(
            state=state,
            models_loaded=registry.ready,
            busy=self.inspector.queue.in_flight > 0,
            error=error,
            recipes=self.recipes(),
            selected_recipe=0,
            drift=self.inspector.drift.alarmed(),
        )

    def recipes(self) -> tuple[str, ...]:
        return tuple(name or "" for name in self.inspector.registry.recipes)

    def set_review_band(self, model: str, band: tuple[float, float] | None) -> None:
        """Only an operator's OPC UA session reaches this (the link checks), hence the audit log's user."""
        registry = self.inspector.registry
        before = registry.get(model).calibration
        entry = registry.set_review_band(model, band)
        assert before is not None and entry.calibration is not None  # set_review_band refuses without one
        self.audit.append(
            "review_band",
            user="opcua operator",
            model=model,
            old=band_text(before.review_band),
            new=band_text(band),
            reason=f"set over OPC UA (calibration {before.name} -> {entry.calibration.name})",
        )
        self.inspector.publish_models()

    def is_operator(self, key: str | None) -> bool:
        settings = self.inspector.settings
        return not settings.has_keys or role_of(settings, key) is Role.operator
