"""Golden samples: per recipe, images whose verdict is known, that a new model version must judge the same way.

    <golden>/good/*.png      known-good parts: a version must never fail one
    <golden>/defect/*.png    known defects: a version must never pass one

Any image format `read_image` reads. The folder is seeded by hand or, in the service, from reviewed inspections
(the operator's review is the label). Not to be confused with `models/golden.py`, the inputs a model directory
keeps for export parity: those check that a bundle matches its own model; these check that a new version
still judges known parts as the line expects. `gate.py` runs the check.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inspector.calibration.calibration import Verdict
from inspector.common.files import fsync_dir, write_atomic
from inspector.data.io import IMAGE_SUFFIXES

GoldenLabel = Literal["good", "defect"]
LABELS: tuple[GoldenLabel, ...] = ("good", "defect")
EXPECTED: dict[GoldenLabel, Verdict] = {"good": "pass", "defect": "fail"}


@dataclass(frozen=True)
class GoldenSample:
    """One golden image and its label (the folder it lies in)."""

    path: Path
    label: GoldenLabel

    @property
    def name(self) -> str:
        """`good/a.png`: how reports and error messages name the image."""
        return f"{self.label}/{self.path.name}"

    @property
    def expected(self) -> Verdict:
        return EXPECTED[self.label]


def golden_samples(folder: Path) -> list[GoldenSample]:
    """The images of `folder/good` and `folder/defect`, sorted by name; none when the folder does not exist."""
    samples: list[GoldenSample] = []
    for label in LABELS:
        sub = Path(folder) / label
        if sub.is_dir():
            samples += [
                GoldenSample(p, label)
                for p in sorted(sub.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            ]
    return samples


def signature(samples: list[GoldenSample]) -> str:
    """Changes when an image is added, removed or replaced: a cached gate result is valid while it holds."""
    digest = hashlib.sha256()
    for s in samples:
        stat = s.path.stat()
        digest.update(f"{s.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def add_golden_sample(folder: Path, label: GoldenLabel, name: str, data: bytes) -> GoldenSample:
    """Write one image into the golden set (atomically, durably); an image of the same name is replaced, and the
    same image under the other label is removed, so a corrected review moves it."""
    target = Path(folder) / label / name
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, data)
    fsync_dir(target.parent)
    for other in LABELS:
        if other != label:
            (Path(folder) / other / name).unlink(missing_ok=True)
    return GoldenSample(target, label)
