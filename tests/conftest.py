"""Shared fixtures: small generated data and one fitted model, made once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never touch the network: a backbone without offline weights must fail fast, not try the hub.
os.environ.setdefault("INSPECTOR_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inspector.data import Dataset
from inspector.data.synthetic import make_category
from inspector.models import PatchCore

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
def fitted_patchcore(dataset: Dataset) -> PatchCore:
    return PatchCore(image_size=SIZE, coreset_ratio=0.1, threads=2).fit(dataset.train(), progress=False)
