"""What a calibration is: thresholds, a review band and what they are expected to do, turned into verdicts.

Dependency-free (no numpy), so the CLI can offer the rules and defaults as choices without importing numpy.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from inspector.common.errors import InspectorError

Verdict = Literal["pass", "review", "fail"]
RuleName = Literal["f1", "youden", "fpr", "recall", "normal"]
DEFAULT_CONFIDENCE = 0.95
DEFAULT_PIXEL_QUANTILE = 0.999
GOOD_SCORES = "good_scores"  # key in `data`: the sorted scores of the good images calibrated on


class CalibrationError(InspectorError, ValueError):
    """A calibration that is missing, damaged or does not belong to the model."""


@dataclass
class Calibration:
    """Thresholds and what they are expected to do on the line.

    `review_band` is in normalised units (multiples of the image threshold): scores inside [low, high] go to a
    person, below `low` pass, above `high` fail. Without a band, normalised score >= 1.0 fails.
    """

    image_threshold: float
    rule: str
    name: str = ""
    pixel_threshold: float | None = None
    review_band: tuple[float, float] | None = None
    targets: dict[str, float] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    model_fingerprint: str = ""
    created: str = ""
    pixel_rule: str = ""  # how pixel_threshold was chosen (masks or good-image map statistics)

    def __post_init__(self) -> None:
        if not (self.image_threshold > 0 and self.image_threshold < float("inf")):
            raise CalibrationError(f"image threshold must be a positive number, got {self.image_threshold}")
        if self.review_band is not None:
            low, high = (float(v) for v in self.review_band)
            if not 0 < low <= 1.0 <= high:
                raise CalibrationError(f"review band must satisfy 0 < low <= 1 <= high, got {low}:{high}")
            self.review_band = (low, high)
        if not self.created:
            self.created = datetime.now(UTC).isoformat(timespec="seconds")
        if not self.name:
            stamp = re.sub(r"[^0-9T]", "", self.created)[:15]
            self.name = f"{self.rule}-{stamp}"

    def normalized(self, score: float) -> float:
        """The score as a multiple of the threshold: 1.0 is exactly at the threshold."""
        return float(score) / self.image_threshold

    def verdict(self, score: float) -> Verdict:
        n = self.normalized(score)
        if self.review_band is not None:
            low, high = self.review_band
            return "pass" if n < low else "fail" if n > high else "review"
        return "fail" if n >= 1.0 else "pass"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["review_band"] = list(self.review_band) if self.review_band else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("review_band") is not None:
            known["review_band"] = tuple(known["review_band"])
        return cls(**known)
