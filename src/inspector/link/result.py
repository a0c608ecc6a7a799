"""What the line is told: one committed inspection as a numbered `LineResult`, and the service's `LineStatus`.

Both are plain values with no service types in them, so every sink (Modbus, OPC UA, MQTT, webhook) reads the
same fields and the link depends on nothing above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from inspector.calibration import Verdict
from inspector.components.regions import Region

# The codes a PLC compares against; 0 is "not judged" (the model has no valid calibration).
VERDICT_CODES: dict[Verdict | None, int] = {None: 0, "pass": 1, "review": 2, "fail": 3}
# OPC 40100's top-level states of a vision system, with the numbers its state machine uses.
MachineState = Literal["Preoperational", "Halted", "Error", "Operational"]
STATE_CODES: dict[MachineState, int] = {"Preoperational": 0, "Halted": 1, "Error": 2, "Operational": 3}


@dataclass(frozen=True)
class LineResult:
    """One committed inspection as the line sees it. `sequence` counts results of this service run from 1
    (wrapping at 2**32); `recipe` is the model's recipe number (1-based position among the served models).
    `regions` are in original image pixels, largest area first: the PLC acts on the biggest defect."""

    sequence: int
    inspection_id: str
    created: float  # unix seconds
    model: str
    recipe: int
    model_version: str
    verdict: Verdict | None
    score: float
    normalized_score: float | None
    threshold: float | None
    regions: tuple[Region, ...]
    width: int
    height: int
    part_id: str | None
    meas_id: str | None
    line: str | None
    camera: str | None
    inference_ms: float  # decode to regions: the time the line waited on the model
    total_ms: float  # arrival to committed record
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def verdict_code(self) -> int:
        return VERDICT_CODES[self.verdict]

    @property
    def created_iso(self) -> str:
        return datetime.fromtimestamp(self.created, UTC).isoformat(timespec="milliseconds")

    def to_json(self) -> dict[str, Any]:
        """The message MQTT and the webhook send: the result with its regions' boxes and centres."""
        return {
            "sequence": self.sequence,
            "inspection_id": self.inspection_id,
            "created": self.created_iso,
            "model": self.model,
            "recipe": self.recipe,
            "model_version": self.model_version,
            "verdict": self.verdict,
            "verdict_code": self.verdict_code,
            "score": self.score,
            "normalized_score": self.normalized_score,
            "threshold": self.threshold,
            "regions": [
                {
                    "x": r.x,
                    "y": r.y,
                    "width": r.width,
                    "height": r.height,
                    "center_x": r.x + r.width // 2,
                    "center_y": r.y + r.height // 2,
                    "area": r.area,
                    "peak": r.peak,
                }
                for r in self.regions
            ],
            "width": self.width,
            "height": self.height,
            "part_id": self.part_id,
            "meas_id": self.meas_id,
            "line": self.line,
            "camera": self.camera,
            "inference_ms": self.inference_ms,
            "total_ms": self.total_ms,
        }


def largest_first(regions: tuple[Region, ...] | list[Region]) -> tuple[Region, ...]:
    """Regions ordered for the line: largest area first, ties by higher peak."""
    return tuple(sorted(regions, key=lambda r: (-r.area, -r.peak)))


@dataclass(frozen=True)
class LineStatus:
    """The service's state as a PLC reads it: OPC 40100's state, and the bits of the Modbus status word."""

    state: MachineState
    models_loaded: bool
    busy: bool  # an inspection is admitted and not yet answered
    error: str | None  # why the service cannot inspect (a model failed to load), else None
    recipes: tuple[str, ...]  # served model names; recipe number n is recipes[n - 1] ("": unloaded, number unused)
    selected_recipe: int  # 0: none selected (the camera's ?model= or the only model decides)
    drift: bool = False  # a drift alarm is on for some recipe: the images no longer look like the reference

    @property
    def ready(self) -> bool:
        return self.state == "Operational"
