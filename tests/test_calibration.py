"""Threshold calibration: each rule's exact answer on known scores, the normal-only guarantee in simulation, clear
errors, and `inspector calibrate` / `predict` / `evaluate` end to end on the session's fitted model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from inspector.calibration import Calibration, CalibrationError, list_calibrations, load_active_calibration
from inspector.calibration.rules import (
    choose_threshold,
    confusion_counts,
    good_images_needed,
    normal_order_statistic,
    pixel_threshold_from_masks,
    pixel_threshold_from_normals,
)
from inspector.calibration.workflow import normal_images, split_holdout, training_overlap
from inspector.cli import main
from inspector.data import Dataset
from inspector.data.mvtec import Sample


def labelled(good: np.ndarray, defect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([good, defect]).astype(float)
    return np.r_[np.zeros(len(good), bool), np.ones(len(defect), bool)], scores


GOOD_1_100 = np.arange(1.0, 101.0)


# ---- each rule's exact answer --------------------------------------------------------------------------------


def test_f1_and_youden_pick_their_own_optimum() -> None:
    labels, scores = labelled(GOOD_1_100, np.array([95.5, 101.0]))
    # F1: failing from 101 catches one defect, no alarm (F1 2/3); from 95.5 both but five alarms (F1 4/9).
    # Each threshold sits midway below its lowest failing score, so no image is on it.
    assert choose_threshold("f1", labels, scores).threshold == 100.5
    # Youden: failing from 95.5, recall 1 - FRR 0.05 = 0.95 beats 0.5 from 101.
    assert choose_threshold("youden", labels, scores).threshold == 95.25
    separable = labelled(np.arange(10.0), np.arange(10.0, 15.0))
    assert choose_threshold("f1", *separable).threshold == choose_threshold("youden", *separable).threshold == 9.5


def test_fpr_rule_is_the_lowest_threshold_meeting_the_target() -> None:
    labels, scores = labelled(GOOD_1_100, np.array([95.5, 200.0]))
    choice = choose_threshold("fpr", labels, scores, target_fpr=0.05)
    assert choice.threshold == 95.25  # rejects exactly 5 good (96..100) and catches the defect at 95.5
    assert choice.expected["false_rejects"] == 5
    assert choice.expected["escapes"] == 0
    labels, scores = labelled(GOOD_1_100, np.array([200.0]))
    assert choose_threshold("fpr", labels, scores, target_fpr=0.05).threshold == 95.5
    assert choose_threshold("fpr", labels, scores, target_fpr=0.049).threshold == 96.5
    # The bound holds for every threshold between the same good scores: Clopper-Pearson with 5 of 100.
    assert choice.expected["false_reject_rate_upper"] == pytest.approx(stats.beta.ppf(0.95, 6, 95))
    assert choice.expected["target_met"] is False  # 5/100 observed does not assure <= 5%


def test_recall_rule_is_the_highest_threshold_meeting_the_target() -> None:
    labels, scores = labelled(np.array([0.5, 0.6]), np.arange(1.0, 21.0))
    assert choose_threshold("recall", labels, scores, target_recall=0.9).threshold == 2.5  # 18 of 20 fail
    assert choose_threshold("recall", labels, scores, target_recall=0.95).threshold == 1.5
    assert choose_threshold("recall", labels, scores, target_recall=0.999).threshold == 0.8
    assert choose_threshold("recall", labels, scores, target_recall=0.9).expected["escapes"] == 2


def test_normal_rule_uses_the_order_statistic_the_binomial_allows() -> None:
    labels = np.zeros(100, bool)
    choice = choose_threshold("normal", labels, GOOD_1_100, target_fpr=0.05, confidence=0.95)
    # Independent check: the k-th highest of n keeps FRR <= t with confidence c iff P(Binomial(n, t) >= k) >= c.
    k = max(k for k in range(1, 101) if stats.binom.sf(k - 1, 100, 0.05) >= 0.95)
    assert k == 2
    assert choice.expected["order_statistic"] == k
    assert choice.threshold == 99.0
    assert choice.rule == "normal"
    assert choice.expected["false_reject_rate"] == pytest.approx(2 / 101)
    assert choice.expected["false_reject_rate_upper"] <= 0.05
    assert choice.expected["target_met"] is True
    # `fpr` without defects is the same rule: there is nothing to trade the false rejects against.
    assert choose_threshold("fpr", labels, GOOD_1_100, target_fpr=0.05).rule == "normal"
    big = np.random.default_rng(1).normal(size=2000)
    assert choose_threshold("normal", np.zeros(2000, bool), big, target_fpr=0.05).threshold < big.max()


def test_normal_rule_with_too_few_images_takes_the_highest_and_says_what_it_promises() -> None:
    assert good_images_needed(0.01, 0.95) == 299  # log(0.05) / log(0.99) = 298.07
    assert normal_order_statistic(298, 0.01, 0.95) == (1, False)
    assert normal_order_statistic(299, 0.01, 0.95) == (1, True)
    scores = np.random.default_rng(0).gamma(2.0, size=95)
    choice = choose_threshold("normal", np.zeros(95, bool), scores, target_fpr=0.01)
    assert choice.threshold == scores.max()
    assert choice.expected["target_met"] is False
    assert choice.expected["false_reject_rate_upper"] == pytest.approx(1 - 0.05 ** (1 / 95))
    assert choice.expected["good_images_needed"] == 299
    assert "299" in choice.expected["note"]


def test_normal_rule_meets_its_target_on_fresh_parts_in_simulation() -> None:
    """Seeded: thresholds from 200 held-out good scores keep the true FRR (known distribution) and the FRR
    measured on fresh parts within the target in at least ~the stated share of repetitions."""
    rng = np.random.default_rng(42)
    target, confidence, n, reps = 0.05, 0.9, 200, 400
    dist = stats.lognorm(s=0.6, scale=3.0)
    true_frr = np.empty(reps)
    fresh_frr = np.empty(reps)
    for i in range(reps):
        t = choose_threshold(
            "normal", np.zeros(n, bool), dist.rvs(n, random_state=rng), target_fpr=target, confidence=confidence
        ).threshold
        true_frr[i] = dist.sf(t)
        fresh_frr[i] = np.mean(dist.rvs(20000, random_state=rng) >= t)
    k, _ = normal_order_statistic(n, target, confidence)
    assert np.mean(true_frr <= target) >= confidence - 0.03  # binomial noise of 400 repetitions: sd 0.015
    assert np.mean(fresh_frr <= target) >= confidence - 0.04
    assert np.mean(true_frr) == pytest.approx(k / (n + 1), rel=0.1)


# ---- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5])
def test_targets_outside_zero_one_are_refused(target: float) -> None:
    labels, scores = labelled(GOOD_1_100, np.array([200.0]))
    with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
        choose_threshold("fpr", labels, scores, target_fpr=target)
    with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
        choose_threshold("recall", labels, scores, target_recall=target)
    with pytest.raises(CalibrationError, match="confidence"):
        choose_threshold("f1", labels, scores, confidence=target)


def test_bad_inputs_give_clear_errors() -> None:
    good_only = (np.zeros(5, bool), np.arange(5.0))
    defect_only = (np.ones(5, bool), np.arange(5.0))
    cases = [
        (lambda: choose_threshold("f1", [], []), "no images"),
        (lambda: choose_threshold("f1", *good_only), "needs both good and defective.*false-reject target"),
        (lambda: choose_threshold("youden", *defect_only), "needs both good and defective"),
        (lambda: choose_threshold("recall", *good_only, target_recall=0.9), "needs defective images"),
        (lambda: choose_threshold("normal", *defect_only, target_fpr=0.1), "needs good images"),
        (lambda: choose_threshold("fpr", *good_only), "needs a target fpr"),
        (lambda: choose_threshold("f1", *labelled(np.ones(3), np.ones(3) * 2), target_fpr=0.1), "takes no target"),
        (lambda: choose_threshold("f1", [0, 1], [0.1, np.nan]), "NaN"),
        (lambda: choose_threshold("f1", [0, 2], [0.1, 0.2]), "0 \\(good\\) / 1"),
        (lambda: choose_threshold("best", *good_only), "unknown rule"),
    ]
    for call, message in cases:
        with pytest.raises(CalibrationError, match=message):
            call()


# ---- pixel thresholds and decisions --------------------------------------------------------------------------


def test_pixel_thresholds_from_masks_and_from_good_maps() -> None:
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.0, 0.4, size=(4, 32, 32)).astype(np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[1:, 8:16, 8:16] = True
    maps[masks] += 0.6  # defect pixels 0.6..1.0, normal 0..0.4: any threshold in (0.4, 0.6] is perfect
    t = pixel_threshold_from_masks(maps, masks)
    assert 0.4 < t <= maps[masks].min()
    assert pixel_threshold_from_normals(maps[:1], 0.99) == pytest.approx(np.quantile(maps[:1], 0.99))
    with pytest.raises(CalibrationError, match="both defect and normal"):
        pixel_threshold_from_masks(maps, np.zeros(maps.shape, bool))


def test_confusion_counts_match_the_verdicts_a_calibration_gives() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = rng.gamma(2.0, size=300) + labels * 2.0
    for band in (None, (0.9, 1.2)):
        calibration = Calibration(image_threshold=3.0, rule="f1", review_band=band)
        counts = confusion_counts(labels, scores, calibration)
        verdicts = np.array([calibration.verdict(s) for s in scores])
        fail = scores / 3.0 >= 1.0
        assert counts["false_reject"] == np.sum(~labels & fail)
        assert counts["escape"] == np.sum(labels & ~fail)
        assert counts["false_reject_rate"] == pytest.approx(np.mean(fail[~labels]))
        if band:
            for cls, mask in (("good", ~labels), ("defective", labels)):
                assert counts["verdicts"][cls] == {
                    v: int(np.sum(mask & (verdicts == v))) for v in ("pass", "review", "fail")
                }


def test_holdout_split_is_stratified_and_training_copies_are_found(tmp_path: Path, dataset: Dataset) -> None:
    samples = dataset.test()
    cal, held = split_holdout(samples, 0.5, seed=0)
    assert sorted(map(str, (s.path for s in cal + held))) == sorted(str(s.path) for s in samples)
    for t in {s.defect_type for s in samples}:
        n = sum(s.defect_type == t for s in samples)
        assert sum(s.defect_type == t for s in held) == round(n / 2)
    assert split_holdout(samples, 0.5, seed=0) == (cal, held) != split_holdout(samples, 0.5, seed=1)
    folder = tmp_path / "good"
    folder.mkdir()
    shutil.copy(dataset.train()[0], folder / "copied.png")
    shutil.copy(samples[0].path, folder / "fresh.png")
    scorer = SimpleNamespace(data_info={"train_dir": str(dataset.train_dir)})
    found = training_overlap(normal_images(folder).samples, scorer)  # type: ignore[arg-type]
    assert [s.path.name for s in found] == ["copied.png"]
    train_sample = [Sample(dataset.train()[1], "good", None)]
    assert training_overlap(train_sample, scorer)[0].path == dataset.train()[1]  # type: ignore[arg-type,index]
    assert training_overlap(samples, SimpleNamespace(data_info={})) is None  # type: ignore[arg-type]


# ---- the command line ----------------------------------------------------------------------------------------


@pytest.fixture
def model_dir(patchcore_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session's saved PatchCore (it records its training data), so every test starts
    without calibrations and none depends on another having run."""
    return Path(shutil.copytree(patchcore_dir, tmp_path / "synthetic"))


def test_calibrate_writes_the_active_calibration_plots_and_report(model_dir: Path, dataset: Dataset, capsys) -> None:
    code = main(
        [
            "calibrate",
            "--model-dir",
            str(model_dir),
            "--data-root",
            str(dataset.root),
            "--holdout",
            "0.4",
            "--review-band",
            "0.9:1.2",
            "--name",
            "first",
            "-q",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    for text in ("rule f1", "image threshold", "false rejects", "escapes", "pass", "measured on the holdout"):
        assert text in out
    active = json.loads((model_dir / "calibration.json").read_text())
    assert active["name"] == "first"
    assert active["rule"] == "f1"
    assert active["review_band"] == [0.9, 1.2]
    assert active["image_threshold"] > 0
    assert active["pixel_threshold"] > 0
    assert "masks" in active["pixel_rule"]
    assert active["data"]["holdout"]["n_good"] == 4
    assert active["data"]["n_good"] == 6
    assert {"false_reject_rate", "false_reject_rate_upper", "escape_rate", "confusion"} <= active["expected"].keys()
    folder = model_dir / "calibrations" / "first"
    for name in ("roc.png", "pr.png", "histogram.png", "rates.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Confusion matrix" in (folder / "report.html").read_text()


def test_predict_and_evaluate_use_the_active_calibration(model_dir: Path, dataset: Dataset, capsys) -> None:
    for name in ("first", "second"):
        args = ["--model-dir", str(model_dir), "--data-root", str(dataset.root), "--method", "youden"]
        code = main(["calibrate", *args, "--name", name, "-q"])
        assert code == 0
    calibration = load_active_calibration(model_dir)
    assert calibration.name == "second"
    images = [s.path for s in dataset.test()[::4]]
    capsys.readouterr()
    assert main(["predict", "--model-dir", str(model_dir), *map(str, images)]) == 0
    for line in map(json.loads, capsys.readouterr().out.splitlines()):
        assert line["normalized_score"] == pytest.approx(line["score"] / calibration.image_threshold, abs=1e-5)
        assert line["verdict"] == calibration.verdict(line["score"])
    assert main(["evaluate", "--model-dir", str(model_dir), "--data-root", str(dataset.root), "--json", "-q"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    c = report["confusion"]
    assert c["true_pass"] + c["false_reject"] + c["escape"] + c["true_fail"] == report["n_test"]
    assert report["false_reject_rate"] == c["false_reject"] / (report["n_test"] - report["n_defect"])
    assert report["calibration"]["name"] == "second"
    assert "optimistic" in captured.err
    assert main(["calibrate", "--model-dir", str(model_dir), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "* second" in listing
    assert "  first" in listing
    assert main(["calibrate", "--model-dir", str(model_dir), "--activate", "first"]) == 0
    assert load_active_calibration(model_dir).name == "first"
    assert len(list_calibrations(model_dir)) == 2


def test_calibrate_on_good_images_only_and_its_refusals(model_dir: Path, dataset: Dataset, capsys) -> None:
    good = dataset.path / "test" / "good"
    args = ["calibrate", "--model-dir", str(model_dir), "--no-activate", "-q"]
    assert main([*args, "--normal-dir", str(good), "--target-fpr", "0.05", "--name", "normal"]) == 0
    out = capsys.readouterr().out
    assert "rule normal" in out
    assert "NOTE" in out
    assert "NOT met" in out  # 10 good images cannot assure 5%
    saved = next(c for c in list_calibrations(model_dir) if c.name == "normal")
    assert saved.pixel_rule.startswith("0.999 quantile")
    assert saved.expected["order_statistic"] == 1
    assert main([*args, "--normal-dir", str(good)]) == 2
    assert "false-reject target" in capsys.readouterr().err
    assert main([*args, "--normal-dir", str(dataset.train_dir), "--target-fpr", "0.05"]) == 2
    assert "used to fit this model" in capsys.readouterr().err
    assert main([*args, "--normal-dir", str(dataset.train_dir), "--target-fpr", "0.05", "--allow-train"]) == 0
    assert "optimistic" in capsys.readouterr().err
    assert main([*args, "--method", "f1", "--target-fpr", "0.05"]) == 2
    assert "takes no target fpr" in capsys.readouterr().err
    assert main([*args, "--target-fpr", "1.5"]) == 2
    with pytest.raises(SystemExit):
        main([*args, "--review-band", "1.2:0.9"])
