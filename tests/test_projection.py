"""PatchCore's projection of patch features (PCA or whitening, fitted on the training patches): the statistics and
the projection are right, a projected model's network ends in the projection and it saves, loads, exports and
scores the same everywhere, and model directories from before the option score as they did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inspector.common.errors import ParameterError
from inspector.components.projection import PatchStatistics, fit_projection
from inspector.data import Dataset, read_image
from inspector.evaluation.evaluate import evaluate
from inspector.export import export_bundle
from inspector.models.estimators import PatchCore
from inspector.models.persistence import MANIFEST, read_model_dir, write_model_dir
from inspector.models.scoring import PatchCoreScorer, load_scorer
from tests.conftest import SIZE


def correlated_rows(n: int = 4000, width: int = 12, seed: int = 0) -> np.ndarray:
    """Rows with a large common offset and very different spreads per direction, like backbone features."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(width, width)) * np.geomspace(10.0, 0.01, width)[:, None]
    return (rng.normal(size=(n, width)) @ mixing + 300.0).astype(np.float32)


def statistics_of(rows: np.ndarray, batch: int = 700) -> PatchStatistics:
    statistics = PatchStatistics()
    for start in range(0, len(rows), batch):
        statistics.add(rows[start : start + batch])
    return statistics


def test_statistics_stream_to_the_mean_and_covariance_of_all_rows() -> None:
    rows = correlated_rows()
    statistics = statistics_of(rows)
    assert statistics.count == len(rows)
    exact = rows.astype(np.float64)
    np.testing.assert_allclose(statistics.mean, exact.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(statistics.covariance, np.cov(exact.T, bias=True), rtol=1e-4, atol=1e-6)


def test_full_width_pca_keeps_distances_and_fewer_dims_keep_the_most_variance() -> None:
    rows = correlated_rows()
    statistics = statistics_of(rows)
    full = fit_projection(statistics, "pca")
    a, b = full(rows[:50]), full(rows[50:100])
    np.testing.assert_allclose(
        np.linalg.norm(a - b, axis=1), np.linalg.norm(rows[:50] - rows[50:100], axis=1), rtol=1e-3
    )
    four = fit_projection(statistics, "pca", 4)
    projected = four(rows)
    assert projected.shape == (len(rows), 4) and projected.dtype == np.float32
    variances = projected.var(axis=0)
    assert np.all(np.diff(variances) <= 0)  # largest first
    total = np.trace(statistics.covariance)
    assert variances.sum() / total > 0.99  # the spreads fall off geometrically
    # The same patches give the same matrix, however they were batched (eigenvector signs are fixed).
    np.testing.assert_allclose(fit_projection(statistics_of(rows, 1000), "pca", 4).matrix, four.matrix, atol=1e-4)


def test_whitening_gives_the_training_patches_unit_covariance() -> None:
    rows = correlated_rows()
    whitened = fit_projection(statistics_of(rows), "whiten", 6)(rows)
    np.testing.assert_allclose(np.cov(whitened.T, bias=True), np.eye(6), atol=1e-3)
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-3)


def test_bad_widths_and_empty_statistics_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="between 1 and the feature width"):
        fit_projection(statistics_of(correlated_rows()), "pca", 13)
    with pytest.raises(ValueError, match="no patches"):
        PatchStatistics().covariance  # noqa: B018


# ---- the estimator ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def projected(dataset: Dataset) -> PatchCore:
    model = PatchCore(image_size=SIZE, coreset_ratio=0.1, projection="pca", projection_dim=24, threads=2)
    return model.fit(dataset.train(), progress=False)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def projected_dir(projected: PatchCore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return projected.save(tmp_path_factory.mktemp("projected") / "model", data={"category": "synthetic"})


def test_projected_model_searches_a_narrower_bank_and_still_finds_defects(
    projected: PatchCore, projected_dir: Path, dataset: Dataset
) -> None:
    assert projected.memory_bank_.shape[1] == 24
    assert projected.index_.dim == 24
    assert projected.projection_ is not None and projected.projection_.matrix.shape == (152, 24)
    # The network itself ends in the projection: the line searches what it outputs, with no extra step.
    loaded = load_scorer(projected_dir)
    assert loaded.runner(np.zeros((1, 3, SIZE, SIZE), np.float32))[0].shape == (1, 24, SIZE // 8, SIZE // 8)
    report, _ = evaluate(load_scorer(projected_dir, threads=2), dataset, progress=False)
    assert report["image_auroc"] >= 0.9
    assert report["pixel_auroc"] >= 0.9


def test_projected_model_scores_the_same_in_memory_from_disk_and_as_a_bundle(
    projected: PatchCore, projected_dir: Path, dataset: Dataset, tmp_path: Path
) -> None:
    images = [read_image(s.path) for s in dataset.test()[:6]]
    before = projected.score(images)
    after = load_scorer(projected_dir).score(images)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5)
    np.testing.assert_allclose(after.maps, before.maps, rtol=1e-5, atol=1e-4)
    report = export_bundle(projected_dir, tmp_path / "bundle", "fp32", threads=2)
    assert report.passed
    np.testing.assert_allclose(load_scorer(tmp_path / "bundle").score(images).scores, before.scores, rtol=1e-5)


def test_whitened_model_scores_mahalanobis_distances(dataset: Dataset) -> None:
    model = PatchCore(image_size=SIZE, coreset_ratio=0.1, projection="whiten", projection_dim=32, threads=2)
    model.fit(dataset.train()[:12], progress=False)
    assert model.projection_ is not None
    # In the whitened space the bank's spread is about one per direction, whatever the features' scale.
    assert 0.2 < float(model.memory_bank_.std(axis=0).mean()) < 5.0
    report, _ = evaluate(model.scorer_, dataset, progress=False)
    assert report["image_auroc"] >= 0.85


def test_a_model_directory_from_before_the_option_scores_as_before(
    patchcore_dir: Path, dataset: Dataset, tmp_path: Path
) -> None:
    manifest, files = read_model_dir(patchcore_dir)
    params = {k: v for k, v in manifest["params"].items() if k not in ("projection", "projection_dim", "nprobe")}
    old = {**{k: v for k, v in manifest.items() if k != "files"}, "params": params}
    write_model_dir(tmp_path / "old", old, files)
    assert "projection" not in json.loads((tmp_path / "old" / MANIFEST).read_text())["params"]
    images = [read_image(s.path) for s in dataset.test()[:4]]
    scorer = load_scorer(tmp_path / "old")
    assert isinstance(scorer, PatchCoreScorer) and scorer.index.dim == 152
    np.testing.assert_array_equal(scorer.score(images).scores, load_scorer(patchcore_dir).score(images).scores)


def test_projection_parameters_are_stored_unchanged_round_trip_and_are_validated_by_fit() -> None:
    model = PatchCore(projection="whiten", projection_dim=48)
    params = model.get_params()
    assert params["projection"] == "whiten" and params["projection_dim"] == 48
    assert PatchCore().set_params(**params).get_params() == params
    image = [np.zeros((32, 32, 3), np.uint8)]
    with pytest.raises(ParameterError, match="projection must be one of"):
        PatchCore(projection="svd").fit(image)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="projection_dim needs a projection"):
        PatchCore(projection_dim=16).fit(image)
    with pytest.raises(ParameterError, match="positive integer"):
        PatchCore(projection="pca", projection_dim=0).fit(image)
    with pytest.raises(ParameterError, match="exceeds the patch features' width 152"):
        PatchCore(image_size=32, projection="pca", projection_dim=153).fit(image)
