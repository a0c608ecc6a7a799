"""The golden-sample gate: may this model version go live? `inspector gate` and the service's promote run it.

A version fails the gate on a golden image when its verdict, under its own active calibration, contradicts the
image's label: a known-good part judged `fail` or a known defect judged `pass`. With a review band that means the
score moved across the whole band to the wrong side (a good part above its upper edge, a defect below its lower
edge); without one, across the threshold. A golden image landing inside the band goes to a person, so no wrong
verdict reaches the line, and does not fail the gate. An image that cannot be read fails it too: a gate that
skipped images would pass what it never checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from inspector.calibration.calibration import Calibration, Verdict
from inspector.calibration.golden_samples import GoldenLabel, GoldenSample
from inspector.common.errors import InspectorError
from inspector.data.io import ImageReadError, read_image
from inspector.models.scoring import Scorer


class GateError(InspectorError, ValueError):
    """The gate cannot judge the version at all (no calibration, no golden images)."""


@dataclass(frozen=True)
class GoldenCheck:
    """One golden image as the candidate judged it; `problem` is empty when it passed."""

    name: str
    label: GoldenLabel
    expected: Verdict
    verdict: Verdict | None
    score: float | None
    normalized_score: float | None
    problem: str

    @property
    def failed(self) -> bool:
        return bool(self.problem)


@dataclass(frozen=True)
class GateReport:
    """The gate's result for one model version and calibration over one golden set."""

    calibration: str
    threshold: float
    review_band: tuple[float, float] | None
    checks: tuple[GoldenCheck, ...]

    @property
    def failures(self) -> list[GoldenCheck]:
        return [c for c in self.checks if c.failed]

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        """One line: how many golden images, of which how many failed."""
        good = sum(c.label == "good" for c in self.checks)
        counts = f"{len(self.checks)} golden images ({good} good, {len(self.checks) - good} defect)"
        if self.passed:
            return f"gate passed: {counts}, none judged against its label (calibration {self.calibration})"
        return f"gate failed: {len(self.failures)} of {counts} judged against their label"

    def failure_lines(self) -> list[str]:
        """One line per failed image: which, what was expected, what the candidate said and why it counts."""
        return [f"{c.name}: {c.problem}" for c in self.failures]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "calibration": self.calibration,
            "threshold": self.threshold,
            "review_band": list(self.review_band) if self.review_band else None,
            "total": len(self.checks),
            "failed": len(self.failures),
            "checks": [{**asdict(c), "failed": c.failed} for c in self.checks],
        }


def run_gate(scorer: Scorer, calibration: Calibration | None, samples: Sequence[GoldenSample]) -> GateReport:
    """Score every golden image with the candidate and judge it with the candidate's calibration."""
    if calibration is None:
        raise GateError("the version has no valid calibration, so it gives no verdicts to check: calibrate it first")
    if not samples:
        raise GateError("the golden set holds no images (expected good/ and defect/ folders of images)")
    checks = [_check(scorer, calibration, s) for s in samples]
    return GateReport(calibration.name, calibration.image_threshold, calibration.review_band, tuple(checks))


def _check(scorer: Scorer, calibration: Calibration, sample: GoldenSample) -> GoldenCheck:
    try:
        image = read_image(sample.path)
    except ImageReadError as exc:
        return GoldenCheck(sample.name, sample.label, sample.expected, None, None, None, f"unreadable: {exc}")
    score = float(scorer.score([image]).scores[0])
    verdict, normalized = calibration.verdict(score), calibration.normalized(score)
    wrong = "fail" if sample.label == "good" else "pass"
    problem = ""
    if verdict == wrong:
        problem = (
            f"expected {sample.expected}, got {verdict}: score {score:.6g} is {normalized:.3f}x the threshold, "
            f"{_where(calibration, normalized)}"
        )
    return GoldenCheck(sample.name, sample.label, sample.expected, verdict, score, normalized, problem)


def _where(calibration: Calibration, normalized: float) -> str:
    if calibration.review_band is None:
        return f"{'at or above' if normalized >= 1.0 else 'below'} it (no review band)"
    low, high = calibration.review_band
    side = "above" if normalized > high else "below"
    return f"{side} the review band {low:g}-{high:g}"
