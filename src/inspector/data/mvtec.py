"""The MVTec-AD folder layout: train/good, optional validation/good, test/<type>, ground_truth/<type>.

Also read by the MVTec 3D-AD layout (which adds validation/good) and by any line's own data kept the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inspector.common.errors import InspectorError
from inspector.data.io import IMAGE_SUFFIXES

GOOD = "good"
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
MVTEC_LICENSE = "CC BY-NC-SA 4.0"
MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)


class CategoryNotFoundError(InspectorError, FileNotFoundError):
    """The data folder is missing or incomplete; the message says where we looked and how to get data."""


class CategoryNameError(InspectorError, ValueError):
    """A category name that is not a plain folder name (empty, '.', '..', or with a path separator)."""


def check_category_name(category: str) -> str:
    """The name itself when it is a plain folder name, so `root / category` stays inside `root`."""
    if (
        not category
        or category in (".", "..")
        or "/" in category
        or "\\" in category
        or Path(category).name != category
    ):
        raise CategoryNameError(f"category must be a plain folder name, got {category!r}")
    return category


@dataclass(frozen=True)
class Sample:
    """One test image with its label; `mask_path` is None for good images and when no mask exists."""

    path: Path
    defect_type: str
    mask_path: Path | None

    @property
    def is_defect(self) -> bool:
        return self.defect_type != GOOD


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name so runs are reproducible."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class Dataset:
    """One category folder. Paths are listed eagerly; images are read only when asked for."""

    def __init__(self, root: str | Path, category: str) -> None:
        self.root = Path(root).expanduser()
        self.category = category
        self.path = self.root / category
        train = self.path / "train" / GOOD
        if not train.is_dir() or not list_images(train):
            raise CategoryNotFoundError(missing_category_message(self.root, category, train))

    @property
    def train_dir(self) -> Path:
        return self.path / "train" / GOOD

    def train(self) -> list[Path]:
        """Good images to fit on."""
        return list_images(self.train_dir)

    def validation(self) -> list[Path]:
        """Held-out good images (MVTec 3D-AD's validation/good), empty when the folder is absent."""
        folder = self.path / "validation" / GOOD
        return list_images(folder) if folder.is_dir() else []

    @property
    def has_masks(self) -> bool:
        return (self.path / "ground_truth").is_dir()

    def test(self) -> list[Sample]:
        """Labelled test images, good first, then each defect type in name order."""
        test_root = self.path / "test"
        if not test_root.is_dir():
            return []
        types = sorted((d.name for d in test_root.iterdir() if d.is_dir()), key=lambda t: (t != GOOD, t))
        samples: list[Sample] = []
        for defect_type in types:
            for image in list_images(test_root / defect_type):
                mask = None
                if defect_type != GOOD:
                    candidate = self.path / "ground_truth" / defect_type / f"{image.stem}_mask.png"
                    mask = candidate if candidate.is_file() else None
                samples.append(Sample(image, defect_type, mask))
        return samples


def missing_category_message(root: Path, category: str, looked_at: Path) -> str:
    return (
        f"No training images for category '{category}': looked for images in {looked_at}.\n"
        f"  Expected layout: {root}/{category}/train/good/*.png, test/<type>/, ground_truth/<type>/<name>_mask.png\n"
        f"  Set the data folder with --data-root or INSPECTOR_DATA_ROOT (now: {root}).\n"
        f"  MVTec AD is available from {MVTEC_PAGE} under {MVTEC_LICENSE} (non-commercial);\n"
        f"  online, `inspector data download mvtec --category {category}` fetches one category.\n"
        f"  Offline, `inspector demo` generates a synthetic category to try the tool on."
    )
