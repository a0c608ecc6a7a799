"""PaDiM: streaming Gaussian statistics, the safe inverse, the exported Mahalanobis head, and fit/score/save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.components.gaussian import StreamingGaussian, inverse_cholesky
from inspector.data import Dataset, read_image
from inspector.data.synthetic import make_category
from inspector.evaluation.metrics import auroc
from inspector.models.padim import MahalanobisMap, Padim
from inspector.models.scoring import PadimScorer, load_scorer

SIZE = 96
PARAMS = {"image_size": SIZE, "threads": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("data")
    make_category(root, "part", n_train=20, n_test_good=10, n_test_defect_per_type=4, size=128, seed=0)
    return Dataset(root, "part")


@pytest.fixture(scope="module")
def test_images(dataset: Dataset) -> tuple[list[np.ndarray], np.ndarray]:
    samples = dataset.test()
    return [read_image(s.path) for s in samples], np.array([s.is_defect for s in samples])


def test_streaming_gaussian_matches_two_pass_estimate() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 5, 4)) * 3.0 + 1000.0  # large mean: raw sums of outer products would cancel badly
    stats = StreamingGaussian()
    for start, stop in [(0, 3), (3, 4), (4, 4), (4, 11), (11, 23)]:
        stats.add(x[start:stop])
    expected = np.stack([np.cov(x[:, p].T) for p in range(5)])
    assert stats.n == 23
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(0.0), expected, atol=1e-10)
    np.testing.assert_allclose(
        stats.covariance(0.5) - stats.covariance(0.0), np.broadcast_to(0.5 * np.eye(4), (5, 4, 4))
    )


def test_inverse_cholesky_whitens_and_survives_bad_matrices() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 6, 6))
    cov = a @ a.transpose(0, 2, 1) + 0.01 * np.eye(6)
    w = inverse_cholesky(cov)
    np.testing.assert_allclose(w.transpose(0, 2, 1) @ w, np.linalg.inv(cov), rtol=1e-6, atol=1e-8)
    assert np.all(np.triu(w, 1) == 0)

    indefinite = np.array([[[1.0, 2.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    w = inverse_cholesky(indefinite)
    assert np.isfinite(w).all()
    assert np.all(np.triu(w, 1) == 0)
    with pytest.raises(ValueError, match="non-finite"):
        inverse_cholesky(np.array([[[np.nan, 0.0], [0.0, 1.0]]]))


def test_mahalanobis_head_matches_textbook_formula() -> None:
    rng = np.random.default_rng(2)
    d, h, w = 5, 3, 4
    a = rng.normal(size=(h * w, d, d))
    cov = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(d)
    mean = rng.normal(size=(d, h, w)).astype(np.float32)
    head = MahalanobisMap(mean, inverse_cholesky(cov).astype(np.float32))
    x = rng.normal(size=(2, d, h, w)).astype(np.float32)
    out = head(torch.from_numpy(x)).numpy()

    diff = (x - mean).reshape(2, d, h * w).transpose(0, 2, 1)  # (B, P, D)
    expected = np.sqrt(np.einsum("bpi,pij,bpj->bp", diff, np.linalg.inv(cov), diff)).reshape(2, 1, h, w)
    np.testing.assert_allclose(out, expected, rtol=1e-4)


def test_fit_score_save_load(
    dataset: Dataset, test_images: tuple[list[np.ndarray], np.ndarray], tmp_path: Path
) -> None:
    images, labels = test_images
    model = Padim(n_features=100, **PARAMS).fit(dataset.train(), progress=False)
    assert len(model.channels_) == 100
    assert np.all(np.diff(model.channels_) > 0)
    result = model.score(images)
    assert result.scores.shape == (len(images),)
    assert result.maps.shape == (len(images), SIZE, SIZE)
    assert np.isfinite(result.maps).all()
    assert auroc(labels, result.scores) >= 0.9  # 1.0 when written

    loaded = load_scorer(model.save(tmp_path / "padim"))
    assert isinstance(loaded, PadimScorer)
    with np.load(tmp_path / "padim" / "gaussians.npz") as state:
        np.testing.assert_array_equal(state["channels"], model.channels_)
    again = loaded.score(images)
    np.testing.assert_allclose(again.scores, result.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again.maps, result.maps, rtol=1e-5, atol=1e-5)


def test_torch_runtime_runs_the_same_mahalanobis_network(
    dataset: Dataset, test_images: tuple[list[np.ndarray], np.ndarray]
) -> None:
    images = test_images[0][:6]
    onnx = Padim(**PARAMS).fit(dataset.train()[:8], progress=False)
    in_torch = Padim(runtime="torch", **PARAMS).fit(dataset.train()[:8], progress=False)
    np.testing.assert_allclose(in_torch.score(images).scores, onnx.score(images).scores, rtol=1e-4)


def test_five_training_images_give_finite_scores(
    dataset: Dataset, test_images: tuple[list[np.ndarray], np.ndarray]
) -> None:
    model = Padim(**PARAMS).fit(dataset.train()[:5], progress=False)
    result = model.score(test_images[0][:6])
    assert np.isfinite(result.scores).all()
    assert np.isfinite(result.maps).all()
    assert np.all(result.scores > 0)
