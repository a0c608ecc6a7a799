"""Calibrating a fitted model: pick the images, keep training images out, score once, split off a holdout, decide.

The CLI and the benchmark share these steps, so what `inspector calibrate` promises is what the benchmark checks.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspector.calibration.calibration import (
    DEFAULT_CONFIDENCE,
    DEFAULT_PIXEL_QUANTILE,
    GOOD_SCORES,
    Calibration,
    CalibrationError,
)
from inspector.calibration.rules import (
    choose_threshold,
    confusion_counts,
    pixel_threshold_from_masks,
    pixel_threshold_from_normals,
)
from inspector.data.mvtec import GOOD, Dataset, Sample, list_images
from inspector.evaluation.scoring import Scored, score_samples
from inspector.models.scoring import Scorer


@dataclass
class CalibrationImages:
    """The chosen images, where they came from (for calibration.json) and warnings for the person calibrating."""

    samples: list[Sample]
    source: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


# ---- which images --------------------------------------------------------------------------------------------


def category_images(data_root: str | Path, category: str) -> CalibrationImages:
    """A category's labelled test set (with masks where present) plus any held-out validation/good images."""
    dataset = Dataset(data_root, category)
    samples = [Sample(p, GOOD, None) for p in dataset.validation()] + dataset.test()
    source = {"source": "category", "category": category, "data_root": str(Path(data_root).resolve())}
    return CalibrationImages(samples, source)


def normal_images(folder: str | Path) -> CalibrationImages:
    """A plain folder of good images (no defects): only a false-reject target can be set from these."""
    folder = _existing_dir(folder, "--normal-dir")
    return CalibrationImages(
        [Sample(p, GOOD, None) for p in list_images(folder)], {"source": "normal_dir", "dir": str(folder.resolve())}
    )


def labelled_folder_images(folder: str | Path) -> CalibrationImages:
    """A folder with good/ and one subfolder per defect type (no masks)."""
    folder = _existing_dir(folder, "--images-dir")
    types = sorted((d.name for d in folder.iterdir() if d.is_dir()), key=lambda t: (t != GOOD, t))
    samples = [Sample(p, t, None) for t in types for p in list_images(folder / t)]
    return CalibrationImages(samples, {"source": "images_dir", "dir": str(folder.resolve())})


def _existing_dir(folder: str | Path, flag: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"{flag} {folder} is not a folder")
    return folder


def training_overlap(samples: list[Sample], scorer: Scorer) -> list[Sample] | None:
    """The samples that are among the model's training images (same file, or an identical copy), or None when the
    model does not record where it was fitted. Their scores are optimistic: the memory bank contains them."""
    train_dir = scorer.data_info.get("train_dir")
    if not train_dir or not Path(train_dir).is_dir():
        return None
    train = list_images(Path(train_dir))
    train_paths = {p.resolve() for p in train}
    sizes = {p.stat().st_size for p in train}
    suspects = [s.path for s in samples if s.path.resolve() not in train_paths and s.path.stat().st_size in sizes]
    copied: set[Path] = set()
    if suspects:  # hash only files whose size matches one on the other side
        wanted = {p.stat().st_size for p in suspects}
        hashes = {_sha256(p) for p in train if p.stat().st_size in wanted}
        copied = {p for p in suspects if _sha256(p) in hashes}
    return [s for s in samples if s.path.resolve() in train_paths or s.path in copied]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def choose_images(
    scorer: Scorer,
    category: str | None = None,
    data_root: str | Path | None = None,
    normal_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    allow_train: bool = False,
) -> CalibrationImages:
    """The images to calibrate on, minus the model's training images (their scores are optimistic; `allow_train`
    keeps them), where they came from, and warnings to show. Without a folder the model's own category is used."""
    if normal_dir:
        chosen = normal_images(normal_dir)
    elif images_dir:
        chosen = labelled_folder_images(images_dir)
    else:
        category = category or scorer.data_info.get("category")
        if not category or data_root is None:
            raise CalibrationError(
                "say which images to calibrate on: --category NAME, --normal-dir DIR or --images-dir DIR"
            )
        chosen = category_images(data_root, category)
    samples, source = chosen.samples, dict(chosen.source)
    if not samples:
        raise CalibrationError(f"no images found in {source.get('dir') or source.get('category')}")
    overlap = training_overlap(samples, scorer)
    warnings: list[str] = []
    if overlap is None:
        warnings.append(
            "the model does not record its training images, so they cannot be left out; make sure these images "
            "were not used to fit it"
        )
    elif overlap and allow_train:
        warnings.append(
            f"{len(overlap)} of {len(samples)} images were used to fit this model and are kept (--allow-train): "
            "their scores are optimistic, so the threshold comes out too low and the line will reject more good "
            "parts than stated"
        )
        source["training_images_included"] = len(overlap)
    elif overlap:
        if len(overlap) == len(samples):
            raise CalibrationError(
                f"all {len(samples)} images were used to fit this model; their optimistic scores would set the "
                "threshold too low. Calibrate on held-out images (or --allow-train)"
            )
        warnings.append(
            f"{len(overlap)} of {len(samples)} images were used to fit this model (e.g. {overlap[0].path}); their "
            "scores are optimistic, so they are left out (--allow-train keeps them)"
        )
        left_out = set(overlap)
        samples = [s for s in samples if s not in left_out]
        source["training_images_excluded"] = len(overlap)
    return CalibrationImages(samples, source, warnings)


def split_holdout(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(calibration, holdout): `fraction` of each defect type (and of good) held out at random, stratified so both
    halves see every type; the rates measured on the holdout are what a new batch of parts would show."""
    if not 0.0 < fraction < 1.0:
        raise CalibrationError(f"holdout fraction must be strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    calibration: list[Sample] = []
    holdout: list[Sample] = []
    for defect_type in sorted({s.defect_type for s in samples}):
        group = [s for s in samples if s.defect_type == defect_type]
        order = rng.permutation(len(group))
        n_out = min(len(group) - 1, round(fraction * len(group)))  # a lone image stays for calibration
        holdout += [group[i] for i in sorted(order[:n_out])]
        calibration += [group[i] for i in sorted(order[n_out:])]
    return calibration, holdout


# ---- scoring -------------------------------------------------------------------------------------------------


def score_images(scorer: Scorer, samples: list[Sample], keep_maps: bool = True, progress: bool = True) -> Scored:
    """Score in the model's batch size; keep maps and masks only when a pixel threshold is to be set from them."""
    if not samples:
        raise CalibrationError("no images to score")
    return score_samples(scorer, samples, scorer.batch_size, keep_maps=keep_maps, progress=progress, desc="calibrate")


# ---- deciding ------------------------------------------------------------------------------------------------


def default_rule(has_defects: bool, target_fpr: float | None, target_recall: float | None) -> str:
    """A recall target means `recall`; a false-reject target means `fpr` (`normal` on good images only);
    otherwise best F1 — which needs defects, so good images alone must come with a false-reject target."""
    if target_recall is not None:
        return "recall"
    if target_fpr is not None:
        return "fpr" if has_defects else "normal"
    if not has_defects:
        raise CalibrationError("with good images only, say the false-reject target, e.g. --target-fpr 0.01")
    return "f1"


def pixel_threshold(scored: Scored, quantile: float = DEFAULT_PIXEL_QUANTILE) -> tuple[float | None, str]:
    """(threshold, how it was chosen): best pixel F1 on masks when defects have them, else a high quantile of the
    good images' maps, else none (defective images without masks say nothing about normal pixels)."""
    if scored.maps is None:
        return None, "none (maps not kept)"
    labels = scored.labels
    if scored.masks is not None:
        usable = scored.pixel_usable
        if scored.masks[usable].any():
            threshold = pixel_threshold_from_masks(scored.maps[usable], scored.masks[usable])
            return threshold, f"best pixel F1 on the masks of {int(usable.sum())} images"
    if (~labels).any():
        threshold = pixel_threshold_from_normals(scored.maps[~labels], quantile)
        return threshold, f"{quantile:.4g} quantile of map values of {int((~labels).sum())} good images"
    return None, "none (no masks and no good images)"


def calibrate(
    scored: Scored,
    rule: str | None = None,
    target_fpr: float | None = None,
    target_recall: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    review_band: tuple[float, float] | None = None,
    pixel_quantile: float = DEFAULT_PIXEL_QUANTILE,
    name: str = "",
    data: dict[str, Any] | None = None,
    holdout: Scored | None = None,
) -> Calibration:
    """Everything `inspector calibrate` decides from scored images, as a Calibration ready to save."""
    labels = scored.labels
    rule = rule or default_rule(bool(labels.any()), target_fpr, target_recall)
    choice = choose_threshold(rule, labels, scored.scores, target_fpr, target_recall, confidence)
    pixel, pixel_rule = pixel_threshold(scored, pixel_quantile)
    calibration = Calibration(
        image_threshold=choice.threshold,
        rule=choice.rule,
        name=name,
        pixel_threshold=pixel,
        review_band=review_band,
        targets=choice.targets,
        expected=choice.expected,
        data={**(data or {}), **_counts(scored.samples), GOOD_SCORES: _good_scores(scored)},
        pixel_rule=pixel_rule,
    )
    calibration.expected["confusion"] = confusion_counts(labels, scored.scores, calibration)
    if holdout is not None:
        calibration.data["holdout"] = {**(calibration.data.get("holdout") or {}), **_counts(holdout.samples)}
        calibration.expected["measured_on_holdout"] = confusion_counts(holdout.labels, holdout.scores, calibration)
    return calibration


def _good_scores(scored: Scored) -> list[float]:
    """The good images' scores, sorted: held out from the fit, they are the reference the service's drift watch
    compares the line's pass scores with (the training images' own scores are optimistic)."""
    return sorted(round(float(s), 6) for s in scored.scores[~scored.labels])


def _counts(samples: list[Sample]) -> dict[str, Any]:
    types = Counter(s.defect_type for s in samples)
    return {"n_good": types.pop(GOOD, 0), "n_defect": sum(types.values()), "defect_types": dict(sorted(types.items()))}
