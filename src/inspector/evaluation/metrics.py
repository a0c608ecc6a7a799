"""Anomaly-detection metrics for image- and pixel-level evaluation.

Pure numpy (plus OpenCV for connected components) so evaluation does not pull in scikit-learn at
runtime, and sort-based (O(n log n), no Python loop over pixels or thresholds) so pixel-level
metrics stay fast on tens of millions of pixels. Curve conventions follow scikit-learn, so numbers
are comparable with published results and with the dev-time cross-checks in the test-suite.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "aupro",
    "auroc",
    "f1_max",
    "pixel_auroc",
    "precision_recall_curve",
    "roc_curve",
]


def _as_binary(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Flatten ``labels`` to a bool vector, refusing anything that is not 0/1 so that e.g. a
    {1, 2} encoding cannot silently turn every sample positive."""
    y = np.asarray(labels).ravel()
    if y.dtype == bool:
        return y
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name} must be binary (bool or 0/1)")
    return y != 0


def _as_scores(scores: np.ndarray, n: int) -> np.ndarray:
    """Flatten ``scores`` and check they are finite: NaN would sort to an arbitrary place and
    silently corrupt every curve."""
    s = np.asarray(scores).ravel()
    if s.size != n:
        raise ValueError(f"labels and scores differ in size ({n} vs {s.size})")
    if n == 0:
        raise ValueError("labels and scores are empty")
    if s.dtype.kind not in "biuf":
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return s


def _binary_clf_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative false/true positive counts at each distinct score, thresholds descending.

    One sort plus cumulative sums; tied scores collapse to one point (the last index of the
    tie), which is what makes the trapezoid area equal scikit-learn's tie handling.
    """
    y = _as_binary(labels)
    s = _as_scores(scores, y.size)
    order = np.argsort(s)[::-1]  # order within ties is irrelevant
    s_sorted = s[order]
    y_sorted = y[order]
    del order
    last_of_tie = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])
    idx = np.append(last_of_tie, y.size - 1)
    tps = np.cumsum(y_sorted, dtype=np.int64)[idx]
    fps = idx + 1 - tps
    return fps, tps, s_sorted[idx]


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` over every distinct score, thresholds descending.

    Same convention as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: the curve
    starts at (0, 0) with threshold ``+inf`` and a sample is positive when ``score >= threshold``.
    Raises ValueError when only one class is present, because FPR or TPR is then undefined.
    """
    fps, tps, thresholds = _binary_clf_curve(labels, scores)
    if tps[-1] == 0 or fps[-1] == 0:
        raise ValueError(
            "ROC needs both classes: labels contain only " + ("negatives" if tps[-1] == 0 else "positives")
        )
    fpr = np.concatenate(([0.0], fps / fps[-1]))
    tpr = np.concatenate(([0.0], tps / tps[-1]))
    thresholds = np.concatenate(([np.inf], thresholds.astype(np.float64, copy=False)))
    return fpr, tpr, thresholds


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score``.

    Computed as the trapezoid area's closed form, the probability that a positive outscores a
    negative with ties counting one half: both classes are sorted by value and the smaller class
    is located in the larger with ``searchsorted``. That is the same area as integrating
    ``roc_curve`` but avoids an argsort of every sample, which dominates on tens of millions of
    pixels; counts are summed as integers, so there is no accumulated rounding. Raises
    ValueError when only one class is present, since the AUROC is undefined there.
    """
    y = _as_binary(labels)
    s = _as_scores(scores, y.size)
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both classes: labels contain only " + ("negatives" if n_pos == 0 else "positives"))
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    if n_pos <= n_neg:  # per positive: #negatives below + #negatives below or tied
        below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)
        below_or_tied = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64)
    else:  # same count seen from the negatives: #positives above + #positives above or tied
        below = n_pos * n_neg - np.searchsorted(pos, neg, side="right").sum(dtype=np.int64)
        below_or_tied = n_pos * n_neg - np.searchsorted(pos, neg, side="left").sum(dtype=np.int64)
    return float((int(below) + int(below_or_tied)) / (2.0 * n_pos * n_neg))


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve ``(precision, recall, thresholds)``, scikit-learn convention.

    Thresholds are the distinct scores in ascending order; ``precision`` and ``recall`` have one
    extra trailing point (1, 0) so the curve closes on the precision axis. Raises ValueError when
    there is no positive sample, because recall is then undefined.
    """
    fps, tps, thresholds = _binary_clf_curve(labels, scores)
    if tps[-1] == 0:
        raise ValueError("precision-recall needs at least one positive label")
    precision = tps / (tps + fps)  # tps + fps >= 1: every threshold is an observed score
    recall = tps / tps[-1]
    return (
        np.concatenate((precision[::-1], [1.0])),
        np.concatenate((recall[::-1], [0.0])),
        thresholds[::-1].astype(np.float64, copy=False),
    )


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (positive when score >= it).

    This is the operating point usually reported next to AUROC and the one a line-side threshold
    is calibrated from. F1 is computed from counts, ``2 tp / (tp + fp + P)``, so it is never NaN.
    Among equally good thresholds the highest one is returned (fewest alarms). Raises ValueError
    when there is no positive sample.
    """
    fps, tps, thresholds = _binary_clf_curve(labels, scores)
    n_pos = tps[-1]
    if n_pos == 0:
        raise ValueError("F1 needs at least one positive label")
    f1 = 2.0 * tps / (tps + fps + n_pos)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Pixel-level AUROC over all pixels of all images (masks: bool (N,H,W), maps: (N,H,W))."""
    masks = np.asarray(masks)
    maps = np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks and maps differ in shape ({masks.shape} vs {maps.shape})")
    return auroc(masks.ravel(), maps.ravel())


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """Per defect pixel (in ``masks[masks]`` order) the weight 1 / (n_regions * region size).

    Summing these weights over the pixels above a threshold gives the mean per-region overlap,
    so a small defect counts as much as a large one. Regions are 8-connected components per image.
    """
    inv_sizes: list[np.ndarray] = []
    n_regions = 0
    for mask in masks:
        if not mask.any():
            continue
        n_labels, comp = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
        ids = comp[mask]  # region id per defect pixel, 1..n_labels-1
        sizes = np.bincount(ids, minlength=n_labels).astype(np.float64)
        inv_sizes.append(1.0 / sizes[ids])
        n_regions += n_labels - 1
    if n_regions == 0:
        raise ValueError("AUPRO needs at least one defect region; all masks are empty")
    weights = np.concatenate(inv_sizes)
    weights /= n_regions
    return weights


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap (PRO) curve up to ``fpr_limit``, divided by ``fpr_limit``.

    The MVTec AD segmentation metric (Bergmann et al.): unlike pixel AUROC it weights every defect
    region equally regardless of its size, and it only looks at low false-positive rates, the
    regime in which an inspection line operates. Exact (every distinct score is a threshold):

    * FPR(t) = #normal pixels with score >= t / #normal pixels,
    * PRO(t) = mean over all regions of the fraction of the region with score >= t.

    The curve starts at (0, 0), PRO is interpolated linearly at exactly ``fpr_limit`` and the
    area is a trapezoid sum. ``masks``: bool (N,H,W); ``maps``: scores (N,H,W), compared at
    float32 precision (maps are float32 anyway; this halves the memory of float64 input).
    Raises ValueError when there is no defect region or no normal pixel.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    masks = np.asarray(masks)
    maps = np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks and maps differ in shape ({masks.shape} vs {maps.shape})")
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3:
        raise ValueError(f"expected (N,H,W) or (H,W) arrays, got shape {masks.shape}")
    if masks.dtype != bool:
        masks = _as_binary(masks, "masks").reshape(masks.shape)
    masks = np.ascontiguousarray(masks)
    maps = np.asarray(maps, dtype=np.float32)
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")

    weights = _region_weights(masks)
    neg = maps[~masks]  # float32 copy, sorted in place below
    if neg.size == 0:
        raise ValueError("AUPRO needs normal pixels; every mask pixel is a defect")
    pos = maps[masks]

    # PRO as a function of the threshold: suffix sums of the weights over ascending scores,
    # pro_suffix[i] = PRO when the defect pixels pos_sorted[i:] are predicted positive.
    order = np.argsort(pos, kind="stable")
    pos_sorted = pos[order]
    pro_suffix = np.zeros(pos.size + 1, dtype=np.float64)
    pro_suffix[:-1] = np.cumsum(weights[order][::-1])[::-1]
    pro_suffix /= pro_suffix[0]  # the weights sum to 1 up to rounding; make full overlap exactly 1
    del order, weights, pos

    # Only thresholds at distinct normal scores move the FPR; defect-only thresholds are vertical
    # steps (no area). Walking the distinct normal scores v_k in descending order, the curve goes
    # up to (FPR(>v_k), PRO(>v_k)) and then along a straight segment to (FPR(>=v_k), PRO(>=v_k)),
    # the segment that tied normal and defect scores produce in the point-per-threshold curve.
    # Only segments up to fpr_limit matter, i.e. the top ~fpr_limit share of the normal scores:
    # partition those off in O(n) and sort just them. Computed over ascending values (which
    # searchsorted handles much faster) and reversed at the end.
    n_neg = neg.size
    n_top = min(n_neg, int(np.ceil(fpr_limit * n_neg)) + 1)
    split = n_neg - n_top
    if split > 0:
        neg.partition(split)
    top = neg[split:]  # a view: sorting it sorts the top part of neg in place
    top.sort()
    starts = np.concatenate(([0], np.flatnonzero(top[1:] != top[:-1]) + 1))  # first of each value
    values = top[starts]
    count_ge = n_top - starts  # normal pixels scoring >= each value
    if split > 0:  # the smallest kept value may be tied with normals left below the split
        count_ge[0] += np.count_nonzero(neg[:split] == top[0])
    del neg, top
    # FPR(>= v_k), increasing; the last one is >= fpr_limit (or exactly 1 when all are kept).
    fpr_hi = (count_ge / n_neg)[::-1]
    fpr_lo = np.concatenate(([0.0], fpr_hi[:-1]))  # FPR(> v_k)
    pro_lo = pro_suffix[np.searchsorted(pos_sorted, values, side="right")][::-1]  # PRO(> v_k)
    pro_hi = pro_suffix[np.searchsorted(pos_sorted, values, side="left")][::-1]  # PRO(>= v_k)
    del starts, values, count_ge

    # Segments fully below the limit, then the one crossing it, cut at exactly fpr_limit.
    k = int(np.searchsorted(fpr_hi, fpr_limit, side="left"))  # first segment reaching the limit
    area = float(np.sum((fpr_hi[:k] - fpr_lo[:k]) * (pro_lo[:k] + pro_hi[:k])) / 2.0)
    x0, x1, y0, y1 = fpr_lo[k], fpr_hi[k], pro_lo[k], pro_hi[k]
    y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)  # x1 > x0: every segment adds normals
    area += (fpr_limit - x0) * (y0 + y_lim) / 2.0
    return float(area / fpr_limit)
