"""Threshold rules: from scores of held-out images to one image threshold, with honest bounds on what it does.

Convention everywhere: a part fails when its score >= the threshold. The false-reject rate (FRR) is the share of
good parts that fail, the escape rate the share of defective parts that pass (1 - recall). Line engineers set
targets in these two numbers, so every rule reports both, each with a one-sided upper bound at a stated confidence.

Bounds. For a threshold at the k-th highest of n held-out good scores, the FRR on new parts is Beta(k, n - k + 1)
distributed whatever the score distribution (order statistics of exchangeable, continuous scores); the `normal`
rule picks k from that, so its guarantee is exact and needs no defective images. Any other threshold with x of n
images on the wrong side gets the Clopper-Pearson limit Beta.ppf(c, x + 1, n - x); it bounds the rate of every
threshold between the same two neighbouring scores, so it stays valid although the threshold was chosen on the data.

Pure numpy/scipy and no model: the service and the benchmark call these on stored scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from inspector.calibration.calibration import DEFAULT_CONFIDENCE, DEFAULT_PIXEL_QUANTILE, Calibration, CalibrationError
from inspector.evaluation import metrics

RULES: dict[str, str] = {
    "f1": "highest F1 on the precision-recall curve",
    "youden": "highest Youden's J (recall minus false-reject rate) on the ROC curve",
    "fpr": "lowest threshold whose false-reject rate on these images meets the target (catches most defects)",
    "recall": "highest threshold whose recall on these images meets the target (fewest false rejects)",
    "normal": "k-th highest held-out good score, k chosen so the false-reject rate meets the target with confidence",
}
_EPS = 1e-9  # guards floor/ceil of target * n against rounding (0.29 * 100 = 28.999...)


@dataclass(frozen=True)
class ThresholdChoice:
    """What a rule picked: the raw threshold, the targets it was given and what it is expected to do."""

    threshold: float
    rule: str
    targets: dict[str, float]
    expected: dict[str, Any]


# ---- checks --------------------------------------------------------------------------------------------------


def check_fraction(name: str, value: float) -> float:
    """Targets and confidences are probabilities strictly between 0 and 1; 0 and 1 cannot be promised."""
    if not 0.0 < float(value) < 1.0:
        raise CalibrationError(f"{name} must be strictly between 0 and 1, got {value}")
    return float(value)


def check_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as bool (True = defective) and scores as finite float64, or a clear error."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.size == 0:
        raise CalibrationError("no images to calibrate on")
    if y.size != s.size:
        raise CalibrationError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if y.dtype != bool:
        if not np.all((y == 0) | (y == 1)):
            raise CalibrationError("labels must be 0 (good) / 1 (defective) or bool")
        y = y != 0
    if not np.isfinite(s).all():
        raise CalibrationError("scores contain NaN or infinite values")
    return y, s


# ---- bounds --------------------------------------------------------------------------------------------------


def upper_bound(x: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper limit of a rate with x events in n trials."""
    return 1.0 if x >= n else float(stats.beta.ppf(confidence, x + 1, n - x))


def good_images_needed(target_fpr: float, confidence: float) -> int:
    """Fewest held-out good images for which the highest one bounds the FRR by the target at that confidence."""
    return math.ceil(math.log1p(-confidence) / math.log1p(-target_fpr) - _EPS)


def rates_at(labels: np.ndarray, scores: np.ndarray, threshold: float, confidence: float) -> dict[str, Any]:
    """False-reject and escape counts, rates and Clopper-Pearson upper bounds at one threshold."""
    y, s = check_scores(labels, scores)
    good, bad = s[~y], s[y]
    out: dict[str, Any] = {
        "confidence": confidence,
        "n_good": int(good.size),
        "n_defect": int(bad.size),
        "bound_method": "Clopper-Pearson",
    }
    if good.size:
        x = int(np.count_nonzero(good >= threshold))
        out.update(
            false_rejects=x,
            false_reject_rate=x / good.size,
            false_reject_rate_upper=upper_bound(x, good.size, confidence),
        )
    if bad.size:
        e = int(np.count_nonzero(bad < threshold))
        out.update(escapes=e, escape_rate=e / bad.size, escape_rate_upper=upper_bound(e, bad.size, confidence))
    return out


# ---- the rules -----------------------------------------------------------------------------------------------


def below_lowest_failing(scores: np.ndarray, threshold: float) -> float:
    """Midway between `threshold` (a score that fails) and the highest score that passes: the same verdicts on
    these images, but none of them sits on the threshold, where a difference in the last digit (torch against
    onnxruntime, an export) would flip its verdict."""
    passing = scores[scores < threshold]
    return float((threshold + passing.max()) / 2) if passing.size else threshold


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Threshold of the best F1 (highest one among ties: fewest alarms)."""
    return below_lowest_failing(scores, metrics.f1_max(labels, scores)[1])


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Threshold of the largest recall - FRR (highest one among ties)."""
    fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
    j = tpr[1:] - fpr[1:]  # index 0 is the +inf threshold that rejects nothing
    return below_lowest_failing(scores, float(thresholds[1:][np.argmax(j)]))


def fpr_threshold(labels: np.ndarray, scores: np.ndarray, target_fpr: float) -> float:
    """Lowest threshold rejecting at most floor(target * n) of the n good images; lowest so it catches the most."""
    good = np.sort(scores[~labels])[::-1]
    allowed = min(good.size - 1, math.floor(target_fpr * good.size + _EPS))
    must_pass = good[allowed]  # the (allowed + 1)-th highest good score
    above = scores[scores > must_pass]
    return below_lowest_failing(scores, float(above.min())) if above.size else float(np.nextafter(must_pass, np.inf))


def recall_threshold(labels: np.ndarray, scores: np.ndarray, target_recall: float) -> float:
    """Highest threshold that still fails ceil(target * n) of the n defective images."""
    bad = np.sort(scores[labels])[::-1]
    must_fail = max(1, math.ceil(target_recall * bad.size - _EPS))
    return below_lowest_failing(scores, float(bad[must_fail - 1]))


def normal_order_statistic(n: int, target_fpr: float, confidence: float) -> tuple[int, bool]:
    """The largest k whose k-th highest of n good scores keeps the FRR <= target with that confidence.

    The FRR of that threshold is Beta(k, n - k + 1); its `confidence` quantile grows with k. When even k = 1 (the
    highest score) cannot promise the target, k = 1 is returned with False: the most conservative threshold the
    data can vouch for, whose own bound the caller must then state.
    """
    ks = np.arange(1, n + 1)
    feasible = np.flatnonzero(stats.beta.ppf(confidence, ks, n - ks + 1) <= target_fpr)
    return (int(ks[feasible[-1]]), True) if feasible.size else (1, False)


def choose_threshold(
    rule: str,
    labels: np.ndarray,
    scores: np.ndarray,
    target_fpr: float | None = None,
    target_recall: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> ThresholdChoice:
    """Apply one rule to calibration scores. `fpr` on good images only is the `normal` rule (nothing to trade)."""
    if rule not in RULES:
        raise CalibrationError(f"unknown rule '{rule}'; choose one of {', '.join(RULES)}")
    y, s = check_scores(labels, scores)
    confidence = check_fraction("confidence", confidence)
    n_good, n_bad = int(np.count_nonzero(~y)), int(np.count_nonzero(y))
    if rule == "fpr" and n_bad == 0:
        rule = "normal"
    check_targets(rule, target_fpr, target_recall)
    _check_classes(rule, n_good, n_bad)

    targets: dict[str, float] = {"confidence": confidence}
    if rule == "f1":
        threshold = f1_threshold(y, s)
    elif rule == "youden":
        threshold = youden_threshold(y, s)
    elif rule == "fpr":
        targets["false_reject_rate"] = fpr = _required(target_fpr)
        threshold = fpr_threshold(y, s, fpr)
    elif rule == "recall":
        targets["recall"] = recall = _required(target_recall)
        threshold = recall_threshold(y, s, recall)
    else:
        targets["false_reject_rate"] = fpr = _required(target_fpr)
        k, met = normal_order_statistic(n_good, fpr, confidence)
        threshold = float(np.sort(s[~y])[::-1][k - 1])

    expected = rates_at(y, s, threshold, confidence)
    if rule == "normal":
        expected.update(
            false_reject_rate=k / (n_good + 1),
            false_reject_rate_upper=upper_bound(k - 1, n_good, confidence),
            order_statistic=k,
            bound_method="order statistic (distribution-free)",
        )
        if not met:
            needed = good_images_needed(fpr, confidence)
            expected["good_images_needed"] = needed
            expected["note"] = (
                f"{n_good} held-out good images cannot show a false-reject rate <= {100 * fpr:.3g}% at "
                f"{confidence:.0%} confidence (that needs >= {needed}); the threshold is the highest good score, which "
                f"promises <= {100 * expected['false_reject_rate_upper']:.3g}%. Add good images, lower --confidence or "
                "accept that bound."
            )
    if "false_reject_rate" in targets:
        expected["target_met"] = expected["false_reject_rate_upper"] <= targets["false_reject_rate"]
    elif "recall" in targets:
        expected["target_met"] = expected["escape_rate_upper"] <= 1.0 - targets["recall"]
    return ThresholdChoice(float(threshold), rule, targets, expected)


def _required(target: float | None) -> float:
    """A target that `check_targets` has already required for the rule at hand."""
    if target is None:
        raise CalibrationError("this rule needs a target")
    return target


def check_targets(rule: str, target_fpr: float | None, target_recall: float | None) -> None:
    """Each rule takes exactly the target it is defined by; a stray one is an error, not silently ignored."""
    wants = {"fpr": "target_fpr", "normal": "target_fpr", "recall": "target_recall"}.get(rule)
    given = {"target_fpr": target_fpr, "target_recall": target_recall}
    for name, value in given.items():
        if value is None:
            continue
        check_fraction(name.replace("_", " "), value)
        if name != wants:
            raise CalibrationError(f"the {rule} rule takes no {name.replace('_', ' ')} ({RULES[rule]})")
    if wants and given[wants] is None:
        raise CalibrationError(f"the {rule} rule needs a {wants.replace('_', ' ')}")


def _check_classes(rule: str, n_good: int, n_bad: int) -> None:
    if rule in ("f1", "youden") and (n_good == 0 or n_bad == 0):
        only = "good" if n_bad == 0 else "defective"
        hint = " (with good images only, give a false-reject target)" if n_bad == 0 else ""
        raise CalibrationError(f"the {rule} rule needs both good and defective images, got only {only}{hint}")
    if rule == "normal" and n_good == 0:
        raise CalibrationError("a false-reject target needs good images, got only defective ones")
    if rule == "recall" and n_bad == 0:
        raise CalibrationError("a recall target needs defective images, got only good ones")


# ---- pixel threshold -----------------------------------------------------------------------------------------


def pixel_threshold_from_masks(maps: np.ndarray, masks: np.ndarray, bins: int = 2048) -> float:
    """Map value with the best pixel F1 against the masks, over histogram edges so tens of millions of pixels are
    quick: evenly spaced edges plus quantiles of the defect pixels (where the optimum lies)."""
    values = np.asarray(maps, dtype=np.float32).ravel()
    positive = np.asarray(masks, dtype=bool).ravel()
    if values.size != positive.size:
        raise CalibrationError(f"maps and masks differ in size ({values.size} vs {positive.size})")
    pos, neg = values[positive], values[~positive]
    if pos.size == 0 or neg.size == 0:
        raise CalibrationError("a pixel F1 threshold needs both defect and normal pixels in the masks")
    ramp = np.linspace(0.0, 1.0, bins + 1)
    edges = np.unique(np.concatenate([values.min() + ramp * (values.max() - values.min()), np.quantile(pos, ramp)]))
    tp = np.cumsum(np.histogram(pos, edges)[0][::-1])[::-1]  # pixels >= edges[i] (the last bin is closed)
    fp = np.cumsum(np.histogram(neg, edges)[0][::-1])[::-1]
    f1 = 2.0 * tp / (tp + fp + pos.size)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # highest edge among ties
    return float(edges[best])


def pixel_threshold_from_normals(maps: np.ndarray, quantile: float = DEFAULT_PIXEL_QUANTILE) -> float:
    """A high quantile of good images' map values: without masks, the level good parts rarely reach."""
    check_fraction("pixel quantile", quantile)
    values = np.asarray(maps, dtype=np.float32).ravel()
    if values.size == 0:
        raise CalibrationError("a pixel threshold from good images needs at least one good image's map")
    return float(np.quantile(values, quantile))


# ---- decisions at a calibration ------------------------------------------------------------------------------


def confusion_counts(labels: np.ndarray, scores: np.ndarray, calibration: Calibration) -> dict[str, Any]:
    """Counts at the image threshold (fail when normalised score >= 1) and, with a review band, per verdict.

    Matches `Calibration.verdict` exactly (it is vectorised here), so the numbers are what the line would see.
    """
    y, s = check_scores(labels, scores)
    normalized = s / calibration.image_threshold
    fail = normalized >= 1.0
    good, bad = ~y, y
    out: dict[str, Any] = {
        "true_pass": int(np.count_nonzero(good & ~fail)),
        "false_reject": int(np.count_nonzero(good & fail)),
        "escape": int(np.count_nonzero(bad & ~fail)),
        "true_fail": int(np.count_nonzero(bad & fail)),
        "false_reject_rate": float(np.count_nonzero(good & fail) / good.sum()) if good.any() else None,
        "escape_rate": float(np.count_nonzero(bad & ~fail) / bad.sum()) if bad.any() else None,
    }
    if calibration.review_band is not None:
        low, high = calibration.review_band
        verdict = np.where(normalized < low, "pass", np.where(normalized > high, "fail", "review"))
        out["verdicts"] = {
            cls: {v: int(np.count_nonzero(mask & (verdict == v))) for v in ("pass", "review", "fail")}
            for cls, mask in (("good", good), ("defective", bad))
        }
    return out


def decision_report(labels: np.ndarray, scores: np.ndarray, calibration: Calibration | None) -> dict[str, Any]:
    """Confusion counts, false-reject and escape rate at the active calibration (nulls without one), so a report
    says what the line would have done with these parts, not only how well the scores rank them."""
    if calibration is None:
        return {"calibration": None, "confusion": None, "false_reject_rate": None, "escape_rate": None}
    counts = confusion_counts(np.asarray(labels, dtype=bool), np.asarray(scores), calibration)
    return {
        "calibration": {
            "name": calibration.name,
            "rule": calibration.rule,
            "image_threshold": calibration.image_threshold,
            "review_band": calibration.review_band,
        },
        "confusion": {k: v for k, v in counts.items() if not k.endswith("_rate")},
        "false_reject_rate": counts["false_reject_rate"],
        "escape_rate": counts["escape_rate"],
    }
