"""Shared fixtures: small generated data and one fitted model, made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network: a backbone without offline weights must fail fast, not try the hub.
os.environ.setdefault("INSPECTOR_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inspector.calibration import Calibration, save_calibration
from inspector.data import Dataset, read_image
from inspector.data.synthetic import make_category
from inspector.models.estimators import PatchCore
from inspector.models.scoring import Scorer, load_scorer

SIZE = 128


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_category(root, "synthetic", n_train=24, n_test_good=10, n_test_defect_per_type=5, size=SIZE, seed=0)
    return root


@pytest.fixture(scope="session")
def dataset(synthetic_root: Path) -> Dataset:
    return Dataset(synthetic_root, "synthetic")


@pytest.fixture(scope="session")
def images(dataset: Dataset) -> dict[str, Path]:
    """A good test part and one with a hole, as files."""
    samples = dataset.test()
    return {
        "good": next(s.path for s in samples if not s.is_defect),
        "defect": next(s.path for s in samples if s.defect_type == "hole"),
    }


@pytest.fixture(scope="session")
def fitted_patchcore(dataset: Dataset) -> PatchCore:
    model = PatchCore(image_size=SIZE, coreset_ratio=0.1, threads=2).fit(dataset.train(), progress=False)
    assert isinstance(model, PatchCore)
    return model


@pytest.fixture(scope="session")
def patchcore_dir(fitted_patchcore: PatchCore, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's PatchCore saved as a model directory that records its training data (read-only: copy it
    before changing anything in it)."""
    path = tmp_path_factory.mktemp("models") / "synthetic"
    data = {"category": "synthetic", "data_root": str(dataset.root.resolve()), "train_dir": str(dataset.train_dir)}
    return fitted_patchcore.save(path, data=data)


@pytest.fixture(scope="session")
def patchcore_scorer(patchcore_dir: Path) -> Scorer:
    return load_scorer(patchcore_dir, threads=2)


@pytest.fixture(scope="session")
def service_model_dir(fitted_patchcore: PatchCore, dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's model, saved, with a calibration between its good and defect test scores."""
    model_dir = tmp_path_factory.mktemp("service") / "synthetic"
    fitted_patchcore.save(model_dir, data={"category": "synthetic"})
    samples = dataset.test()
    scores = fitted_patchcore.score([read_image(s.path) for s in samples]).scores
    good = max(s for s, x in zip(scores, samples, strict=True) if not x.is_defect)
    bad = sorted(s for s, x in zip(scores, samples, strict=True) if x.is_defect)
    threshold = float(good + bad[len(bad) // 2]) / 2
    save_calibration(
        model_dir, Calibration(image_threshold=threshold, rule="test", name="mid", pixel_threshold=threshold)
    )
    save_calibration(model_dir, Calibration(image_threshold=threshold * 100, rule="test", name="lax"), activate=False)
    return model_dir
