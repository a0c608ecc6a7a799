"""Tests for inspector.metrics: cross-checked against scikit-learn and a slow textbook AUPRO."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

sk_metrics = pytest.importorskip("sklearn.metrics")

from inspector.evaluation.metrics import (  # noqa: E402
    aupro,
    auroc,
    f1_max,
    pixel_auroc,
    precision_recall_curve,
    roc_curve,
)

SEEDS = [0, 1, 2, 3, 4]


def _random_scores(seed: int, ties: bool, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 1.2 * labels
    if ties:
        scores = np.round(scores * 2) / 2  # ~12 distinct values, heavy ties across classes
    return labels, scores


# --------------------------------------------------------------------------- ROC / AUROC


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_roc_curve_matches_sklearn(seed: int, ties: bool) -> None:
    labels, scores = _random_scores(seed, ties)
    fpr, tpr, thr = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(thr, sk_thr)
    assert thr[0] == np.inf
    assert fpr[0] == 0.0
    assert tpr[0] == 0.0
    assert fpr[-1] == 1.0
    assert tpr[-1] == 1.0
    assert np.all(np.diff(thr) < 0)  # one point per distinct score, descending
    assert len(thr) == len(np.unique(scores)) + 1


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_matches_sklearn(seed: int, ties: bool) -> None:
    labels, scores = _random_scores(seed, ties)
    expected = sk_metrics.roc_auc_score(labels, scores)
    assert auroc(labels, scores) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert auroc(labels.astype(np.int64), scores.astype(np.float32)) == pytest.approx(expected, abs=1e-6)


def test_auroc_ties_count_half() -> None:
    # One positive and one negative with the same score: a diagonal ROC segment, AUROC 0.5.
    assert auroc([0, 1], [0.3, 0.3]) == 0.5
    # 2 of 4 (pos, neg) pairs ordered correctly, 2 tied -> (2 + 0.5 * 2) / 4
    assert auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)


def test_auroc_perfect_and_inverted() -> None:
    labels = np.array([0, 0, 0, 1, 1, 0, 1])
    scores = labels * 2.0 + 0.1 * np.arange(7)
    assert auroc(labels, scores) == 1.0
    assert auroc(labels, -scores) == 0.0
    fpr, tpr, _ = roc_curve(labels, scores)
    # Perfect separation passes through the top-left corner (0, 1).
    assert np.any((fpr == 0.0) & (tpr == 1.0))


@pytest.mark.parametrize("labels", [np.zeros(10, dtype=bool), np.ones(10, dtype=bool)])
def test_single_class_raises(labels: np.ndarray) -> None:
    scores = np.linspace(0, 1, 10)
    with pytest.raises(ValueError, match="both classes"):
        auroc(labels, scores)
    with pytest.raises(ValueError, match="both classes"):
        roc_curve(labels, scores)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="binary"):
        auroc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(ValueError, match="size"):
        auroc([0, 1, 1], [0.1, 0.3])


# --------------------------------------------------------------------------- precision-recall / F1


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_precision_recall_curve_matches_sklearn(seed: int, ties: bool) -> None:
    labels, scores = _random_scores(seed, ties)
    p, r, t = precision_recall_curve(labels, scores)
    sk_p, sk_r, sk_t = sk_metrics.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(p, sk_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r, sk_r, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(t, sk_t)
    assert len(p) == len(r) == len(t) + 1


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_f1_max_matches_sklearn(seed: int, ties: bool) -> None:
    labels, scores = _random_scores(seed, ties)
    best, thr = f1_max(labels, scores)
    sk_p, sk_r, _ = sk_metrics.precision_recall_curve(labels, scores)
    denom = sk_p[:-1] + sk_r[:-1]
    sk_f1 = np.where(denom > 0, 2 * sk_p[:-1] * sk_r[:-1] / np.where(denom > 0, denom, 1), 0)
    assert best == pytest.approx(sk_f1.max(), abs=1e-12)
    # The returned threshold really achieves it with the documented ">=" rule.
    assert sk_metrics.f1_score(labels, scores >= thr) == pytest.approx(best, abs=1e-12)
    assert thr in scores


def test_f1_max_perfect_and_inverted() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.8, 0.2, 0.7, 0.9, 0.3])
    best, thr = f1_max(labels, scores)
    assert best == 1.0
    assert thr == 0.7  # highest threshold that still catches every positive
    # Inverted scores: nothing beats flagging everything, F1 = 2P / (2P + N) = 6 / 9.
    best_inv, thr_inv = f1_max(labels, -scores)
    assert best_inv == pytest.approx(2 / 3)
    assert thr_inv == pytest.approx(-0.9)


def test_pr_and_f1_need_positives() -> None:
    with pytest.raises(ValueError, match="positive"):
        precision_recall_curve(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="positive"):
        f1_max(np.zeros(5), np.arange(5.0))
    # All positives is fine for F1: flag everything, F1 = 1.
    assert f1_max(np.ones(4), np.arange(4.0)) == (1.0, 0.0)


# --------------------------------------------------------------------------- pixel AUROC


def test_pixel_auroc_matches_sklearn() -> None:
    masks, maps = _blob_data(seed=7)
    assert pixel_auroc(masks, maps) == pytest.approx(sk_metrics.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(masks, maps[:, :-1])


# --------------------------------------------------------------------------- AUPRO


def _blob_data(seed: int, n: int = 6, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Masks with a few random discs/rectangles per image (some images clean) and noisy maps
    that are higher on the defects, so the PRO curve is non-trivial."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        if i % 3 == 2:
            continue  # a clean image: normal pixels only
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.integers(2, size - 2, size=2)
            if rng.random() < 0.5:
                cv2.circle(masks[i], (int(cx), int(cy)), int(rng.integers(1, 5)), 1, -1)
            else:
                w, h = rng.integers(1, 6, size=2)
                cv2.rectangle(masks[i], (int(cx), int(cy)), (int(cx + w), int(cy + h)), 1, -1)
    noise = rng.normal(size=(n, size, size)).astype(np.float32)
    maps = np.stack([cv2.GaussianBlur(x, (5, 5), 1.0) for x in noise])
    signal = np.stack([cv2.GaussianBlur(m.astype(np.float32), (7, 7), 2.0) for m in masks])
    return masks.astype(bool), (maps + 1.5 * signal).astype(np.float64)


def _reference_aupro(masks: np.ndarray, maps: np.ndarray, thresholds: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Textbook AUPRO: binarise at each threshold, per-region overlap and FPR, clipped trapezoid."""
    regions = []
    for i, mask in enumerate(masks):
        n_labels, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions += [(i, comp == r) for r in range(1, n_labels)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in sorted(thresholds, reverse=True):
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        pros.append(np.mean([(pred[i] & region).sum() / region.sum() for i, region in regions]))
    area = 0.0
    for x0, x1, y0, y1 in zip(fprs[:-1], fprs[1:], pros[:-1], pros[1:], strict=True):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_slow_reference(seed: int) -> None:
    masks, maps = _blob_data(seed)
    fast = aupro(masks, maps)
    slow = _reference_aupro(masks, maps, np.linspace(maps.max(), maps.min(), 200))
    assert 0.05 < fast < 0.99  # non-trivial case
    assert fast == pytest.approx(slow, abs=1e-2)


@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("seed", [3, 4])
def test_aupro_exact_on_quantised_maps(seed: int, fpr_limit: float) -> None:
    # With few distinct scores the reference can afford every distinct score as a threshold,
    # so it is exact, ties between normal and defect pixels included.
    masks, maps = _blob_data(seed)
    maps = np.round(maps * 4) / 4
    slow = _reference_aupro(masks, maps, np.unique(maps), fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(slow, abs=1e-9)


def test_aupro_invariant_to_monotone_transform() -> None:
    masks, maps = _blob_data(seed=5)
    ranks = np.argsort(np.argsort(maps, axis=None)).reshape(maps.shape).astype(np.float32)
    assert aupro(masks, maps) == pytest.approx(aupro(masks, ranks), abs=1e-12)
    assert aupro(masks, maps) == pytest.approx(aupro(masks, np.exp(maps)), abs=1e-12)


def test_aupro_perfect_map_is_one() -> None:
    masks, _ = _blob_data(seed=0)
    assert aupro(masks, masks.astype(np.float32)) == 1.0
    assert aupro(masks, masks * 5.0 + 0.1) == 1.0


@pytest.mark.parametrize("fpr_limit", [0.3, 0.1, 1.0])
def test_aupro_constant_map(fpr_limit: float) -> None:
    # All scores tied: the only curve points are (0, 0) and (1, 1), so PRO(x) = x and the
    # area up to L is L^2 / 2, i.e. L / 2 after normalisation (0.15 for the default 0.3).
    masks, _ = _blob_data(seed=1)
    constant = np.full(masks.shape, 0.7)
    assert aupro(masks, constant, fpr_limit=fpr_limit) == pytest.approx(fpr_limit / 2, abs=1e-12)
    if fpr_limit == 0.3:
        assert aupro(masks, constant) == pytest.approx(0.15, abs=1e-12)  # the default limit


def _one_found_one_missed(normal_score: float) -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((1, 20, 20), dtype=bool)
    maps = np.full(masks.shape, normal_score)
    masks[0, 2:12, 2:12] = True  # 100 px, found: score 1
    maps[0, 2:12, 2:12] = 1.0
    masks[0, 15:17, 15:17] = True  # 4 px, missed: score 0
    maps[0, 15:17, 15:17] = 0.0
    return masks, maps


def test_aupro_two_regions_one_found_is_half() -> None:
    # Normals at 0.5: the curve jumps to PRO 0.5 at FPR 0 (big region found), stays at 0.5
    # until FPR 1, and the small region only appears at FPR 1. Every region counts equally,
    # so AUPRO is exactly 0.5 although 100 of the 104 defect pixels are found.
    masks, maps = _one_found_one_missed(normal_score=0.5)
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)
    assert pixel_auroc(masks, maps) == pytest.approx(100 / 104, abs=1e-12)


def test_aupro_tie_between_missed_region_and_normals() -> None:
    # Normals tied with the missed region (score 0): after (0, 0.5) the curve goes straight to
    # (1, 1), so PRO(0.3) = 0.65 and the area is 0.3 * (0.5 + 0.65) / 2 = 0.1725 -> 0.575.
    masks, maps = _one_found_one_missed(normal_score=0.0)
    assert aupro(masks, maps) == pytest.approx(0.575, abs=1e-12)


def test_aupro_regions_are_8_connected_and_pooled_over_images() -> None:
    masks = np.zeros((2, 10, 10), dtype=bool)
    maps = np.full(masks.shape, 0.5)
    # Image 0: a diagonal staircase (one 8-connected region, three 4-connected ones), found.
    for k in range(3):
        masks[0, 2 + k, 2 + k] = True
    maps[0][masks[0]] = 1.0
    # Image 0: a separate found square; image 1: one missed square.
    masks[0, 7:9, 7:9] = True
    maps[0, 7:9, 7:9] = 1.0
    masks[1, 3:5, 3:5] = True
    maps[1, 3:5, 3:5] = 0.0
    # 3 regions in total, 2 found -> 2/3. With 4-connectivity it would be 4/5; with a
    # per-image average (1 + 0) / 2 it would be 0.5.
    assert aupro(masks, maps) == pytest.approx(2 / 3, abs=1e-12)


def test_aupro_accepts_single_image() -> None:
    masks, maps = _one_found_one_missed(normal_score=0.5)
    assert aupro(masks[0], maps[0]) == pytest.approx(0.5, abs=1e-12)


def test_aupro_errors() -> None:
    masks, maps = _blob_data(seed=0)
    with pytest.raises(ValueError, match="defect region"):
        aupro(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="normal pixels"):
        aupro(np.ones_like(masks), maps)
    with pytest.raises(ValueError, match="shape"):
        aupro(masks, maps[:, 1:])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(masks, maps, fpr_limit=0.0)
    with pytest.raises(ValueError, match="NaN"):
        aupro(masks, np.where(masks, np.nan, maps))
    for value in (maps, maps * 0.0, masks * 1.0):
        assert np.isfinite(aupro(masks, value))
