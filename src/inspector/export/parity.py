"""The parity gate: an exported bundle must give the golden set the scores, maps and verdicts the fitted model
gave it, or it is not written.

Image scores are compared relative to the fitted model's score; a map by its largest difference relative to the
reference map's peak (near-zero distances lose digits to FAISS's expanded L2, which only the peak puts in
proportion). Verdicts under the active calibration may never flip, at any precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from inspector.calibration import Calibration
from inspector.models.golden import GoldenSet
from inspector.models.scoring import ScoreResult
from inspector.runtime.precision import Precision


@dataclass(frozen=True)
class Tolerance:
    score: float  # largest |score - reference| / |reference|
    map: float  # largest |map - reference| / peak of the reference map


# fp32 differs from torch only in the order of floating-point sums; fp16 keeps ~3 decimal digits; int8's
# activations are quantised to 256 levels per tensor. docs/benchmarks.md has the differences measured.
TOLERANCES: dict[Precision, Tolerance] = {
    "fp32": Tolerance(score=1e-3, map=5e-3),
    "fp16": Tolerance(score=2e-2, map=5e-2),
    "int8": Tolerance(score=1e-1, map=2e-1),
}


@dataclass
class ImageParity:
    name: str
    role: str
    reference_score: float
    score: float
    score_difference: float  # relative
    map_difference: float  # relative to the reference map's peak
    reference_verdict: str | None
    verdict: str | None

    @property
    def flipped(self) -> bool:
        return self.reference_verdict != self.verdict


@dataclass
class ParityReport:
    precision: Precision
    tolerance: Tolerance
    calibration: str | None  # the calibration whose verdicts were compared; None when the model has none
    runtime: str = ""  # what ran the bundle's network (runtime and execution provider)
    images: list[ImageParity] = field(default_factory=list)

    @property
    def max_score_difference(self) -> float:
        return max((i.score_difference for i in self.images), default=0.0)

    @property
    def max_map_difference(self) -> float:
        return max((i.map_difference for i in self.images), default=0.0)

    @property
    def flips(self) -> list[ImageParity]:
        return [i for i in self.images if i.flipped]

    @property
    def passed(self) -> bool:
        return (
            bool(self.images)
            and self.max_score_difference <= self.tolerance.score
            and self.max_map_difference <= self.tolerance.map
            and not self.flips
        )

    def summary(self) -> str:
        """One line: the verdict of the gate and the three figures it rests on."""
        verdicts = f"{len(self.flips)} verdict flips" if self.calibration else "verdicts not checked (no calibration)"
        return (
            f"parity {'passed' if self.passed else 'FAILED'} ({self.precision}, {len(self.images)} golden images): "
            f"max score difference {self.max_score_difference:.2e} (limit {self.tolerance.score:.0e}), "
            f"max map difference {self.max_map_difference:.2e} (limit {self.tolerance.map:.0e}), {verdicts}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "precision": self.precision,
            "tolerance": asdict(self.tolerance),
            "calibration": self.calibration,
            "runtime": self.runtime,
            "max_score_difference": self.max_score_difference,
            "max_map_difference": self.max_map_difference,
            "flips": [i.name for i in self.flips],
            "images": [{**asdict(i), "flipped": i.flipped} for i in self.images],
        }


def compare(
    golden: GoldenSet,
    result: ScoreResult,
    precision: Precision,
    calibration: Calibration | None,
    runtime: str = "",
) -> ParityReport:
    """Compare the bundle's `result` on the golden inputs with the fitted model's reference."""
    report = ParityReport(precision, TOLERANCES[precision], calibration.name if calibration else None, runtime)
    for i, name in enumerate(golden.names):
        reference, score = float(golden.scores[i]), float(result.scores[i])
        tiny = float(np.finfo(np.float32).tiny)
        peak = float(np.abs(golden.maps[i]).max())
        map_difference = float(np.abs(result.maps[i].astype(np.float64) - golden.maps[i]).max())
        report.images.append(
            ImageParity(
                name=name,
                role=golden.roles[i],
                reference_score=reference,
                score=score,
                score_difference=abs(score - reference) / max(abs(reference), tiny),
                map_difference=map_difference / max(peak, tiny),
                reference_verdict=calibration.verdict(reference) if calibration else None,
                verdict=calibration.verdict(score) if calibration else None,
            )
        )
    return report
