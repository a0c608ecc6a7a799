"""FastFlow: exact flow log-determinants, deterministic training, early stopping, Ctrl-C, fit/score/save/load."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.components.flows import FlowStack
from inspector.data import Dataset, read_image
from inspector.data.synthetic import make_category
from inspector.evaluation.metrics import auroc
from inspector.models.fastflow import FastFlow
from inspector.models.scoring import FastFlowScorer, load_scorer

SIZE = 96
PARAMS = {"image_size": SIZE, "threads": 1, "flow_steps": 4, "seed": 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("data")
    make_category(root, "part", n_train=20, n_test_good=10, n_test_defect_per_type=4, size=128, seed=0)
    return Dataset(root, "part")


def test_flow_log_det_matches_autograd_jacobian() -> None:
    generator = torch.Generator().manual_seed(0)
    flow = FlowStack(channels=5, steps=3, generator=generator, hidden_ratio=1.5).double()
    flow.standardise(3.0 * torch.randn(4, 5, 2, 3, dtype=torch.float64, generator=generator) + 1.0)
    with torch.no_grad():
        for p in flow.parameters():  # move away from the near-identity initialisation
            p.add_(0.5 * torch.randn(p.shape, dtype=p.dtype, generator=generator))
    x = torch.randn(1, 5, 2, 3, dtype=torch.float64, generator=generator)
    _, log_det = flow(x)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v)[0], x).reshape(30, 30)
    sign, expected = torch.linalg.slogdet(jacobian)
    assert sign > 0
    torch.testing.assert_close(log_det[0], expected)


def test_training_is_deterministic_and_scores_survive_save_load(dataset: Dataset, tmp_path: Path) -> None:
    first = FastFlow(epochs=4, **PARAMS).fit(dataset.train(), progress=False)
    second = FastFlow(epochs=4, **PARAMS).fit(dataset.train(), progress=False)
    assert len(first.loss_history_) == 4
    assert first.loss_history_ == second.loss_history_
    assert first.loss_history_[-1] < first.loss_history_[0]

    samples = dataset.test()
    images, labels = [read_image(s.path) for s in samples], np.array([s.is_defect for s in samples])
    result = first.score(images)
    assert result.maps.shape == (len(images), SIZE, SIZE)
    assert np.isfinite(result.maps).all()
    assert auroc(labels, result.scores) >= 0.85  # 0.97 when written

    loaded = load_scorer(first.save(tmp_path / "fastflow"))
    assert isinstance(loaded, FastFlowScorer)
    saved = torch.load(tmp_path / "fastflow" / "flows.pt", weights_only=True)
    assert saved["loss_history"] == first.loss_history_
    again = loaded.score(images)
    np.testing.assert_allclose(again.scores, result.scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again.maps, result.maps, rtol=1e-5, atol=1e-5)


def test_flow_weights_come_from_the_seed_alone() -> None:
    def weights(seed: int) -> list[torch.Tensor]:
        flow = FlowStack(channels=6, steps=2, generator=torch.Generator().manual_seed(seed))
        return [t.clone() for t in flow.state_dict().values()]

    torch.manual_seed(0)  # the global RNG plays no part
    first = weights(7)
    torch.manual_seed(99)
    assert all(torch.equal(a, b) for a, b in zip(first, weights(7), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, weights(8), strict=True))


def test_plateau_stops_training_without_feature_cache(dataset: Dataset) -> None:
    # lr=0 never improves on the first epoch's loss: stops after 1 + patience epochs; the cache is disabled
    # so every epoch re-extracts features from the backbone.
    model = FastFlow(epochs=10, lr=0.0, patience=2, feature_cache_mb=0, **PARAMS)
    model.fit(dataset.train()[:4], progress=False)
    assert model.fit_info_["feature_cache_mb"] == 0
    assert len(model.loss_history_) == 3
    assert model.loss_history_[0] == pytest.approx(model.loss_history_[2], rel=1e-6)


def test_interrupt_keeps_best_weights_and_finishes_fit(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    epoch_batches = FastFlow._epoch_batches
    calls = 0

    def interrupt_third_epoch(self: FastFlow, *args: object) -> Iterator[list[torch.Tensor]]:
        nonlocal calls
        calls += 1  # call 1 sets the input standardisation, calls 2.. are epochs
        if calls == 4:
            raise KeyboardInterrupt
        yield from epoch_batches(self, *args)

    monkeypatch.setattr(FastFlow, "_epoch_batches", interrupt_third_epoch)
    with pytest.warns(RuntimeWarning, match="interrupted after 2 epochs"):
        model = FastFlow(epochs=10, **PARAMS).fit(dataset.train()[:6], progress=False)
    assert len(model.loss_history_) == 2
    assert np.isfinite(model.score([read_image(dataset.train()[0])]).scores).all()
