"""PatchCore end to end on generated data: it finds the defects, and a saved model scores the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspector.data import Dataset, read_image
from inspector.evaluate import evaluate
from inspector.models import PatchCore, create_model, load_model
from tests.conftest import SIZE


def test_fit_builds_a_coreset_bank_of_the_requested_size(fitted_patchcore: PatchCore) -> None:
    info = fitted_patchcore.fit_info_
    grid = (SIZE // 8) ** 2
    assert info["patches_seen"] == info["n_images"] * grid
    assert info["bank_size"] == round(0.1 * info["patches_seen"])
    assert fitted_patchcore.index_.ntotal == info["bank_size"]


def test_scores_defects_well_above_chance_with_maps_on_the_defects(
    fitted_patchcore: PatchCore, dataset: Dataset
) -> None:
    report, results = evaluate(fitted_patchcore, dataset, progress=False)
    assert report["image_auroc"] >= 0.9
    assert report["pixel_auroc"] >= 0.9
    assert report["aupro"] >= 0.6
    assert report["n_test"] == len(dataset.test()) and report["ms_per_image"] > 0
    good = [r.score for r in results if not r.sample.is_defect]
    bad = [r.score for r in results if r.sample.is_defect]
    assert np.median(bad) > np.max(good) * 0.9


def test_score_returns_maps_at_input_size_and_stage_timings(fitted_patchcore: PatchCore, dataset: Dataset) -> None:
    images = [read_image(s.path) for s in dataset.test()[:3]]
    result = fitted_patchcore.score(images)
    assert result.scores.shape == (3,) and result.maps.shape == (3, SIZE, SIZE)
    assert np.all(np.isfinite(result.maps))
    assert set(result.timings_ms) == {"preprocess", "features", "search", "postprocess"}
    # Batch scoring and one-at-a-time scoring agree.
    single = np.array([fitted_patchcore.score([im]).scores[0] for im in images])
    np.testing.assert_allclose(result.scores, single, rtol=1e-4)


def test_saved_model_scores_identically(fitted_patchcore: PatchCore, dataset: Dataset, tmp_path: Path) -> None:
    images = [read_image(s.path) for s in dataset.test()[:4]]
    before = fitted_patchcore.score(images)
    fitted_patchcore.save(tmp_path / "model", data={"category": "synthetic"})
    loaded = load_model(tmp_path / "model")
    after = loaded.score(images)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5)
    np.testing.assert_allclose(after.maps, before.maps, rtol=1e-5, atol=1e-4)
    assert loaded.get_params() == fitted_patchcore.get_params()
    # The torch runtime runs the same network as the exported ONNX graph.
    torch_scores = load_model(tmp_path / "model", runtime="torch").score(images).scores
    np.testing.assert_allclose(torch_scores, before.scores, rtol=1e-3)


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_index_and_reweighting_still_separate_defects(dataset: Dataset, index: str) -> None:
    model = create_model(
        "patchcore", image_size=SIZE, coreset_ratio=0.1, index=index, image_score="reweighted", embed_dim=64
    )
    model.fit(dataset.train()[:12], progress=False)
    assert model.memory_bank_.shape[1] == 64
    report, _ = evaluate(model, dataset, progress=False)
    assert report["image_auroc"] >= 0.85


def test_image_score_is_the_peak_of_the_heatmap_the_operator_sees(fitted_patchcore, dataset: Dataset) -> None:
    images = [read_image(s.path) for s in dataset.test()[:4]]
    result = fitted_patchcore.score(images)
    np.testing.assert_allclose(result.scores, result.maps.reshape(len(images), -1).max(axis=1), rtol=1e-6)
    # The paper's raw patch maximum is still there: it is the peak before the map is smoothed, so never lower.
    fitted_patchcore.image_score = "patch"
    try:
        raw = fitted_patchcore.score(images).scores
    finally:
        fitted_patchcore.image_score = "map"
    assert np.all(raw >= result.scores - 1e-4) and np.any(raw > result.scores)
    with pytest.raises(ValueError, match="image_score must be one of"):
        PatchCore(image_score="mean")


def test_unfitted_model_and_empty_training_set_are_clear_errors() -> None:
    model = PatchCore()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.score([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="no training images"):
        model.fit([])
