"""PatchCore end to end on generated data: it finds the defects, and a saved model scores the same."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inspector.common.errors import ParameterError
from inspector.data import Dataset, read_image
from inspector.evaluation.evaluate import evaluate
from inspector.models.estimators import PatchCore, create_model
from inspector.models.persistence import read_manifest
from inspector.models.scoring import PatchCoreScorer, Scorer, load_scorer, patch_rows
from tests.conftest import SIZE


def test_fit_builds_a_coreset_bank_of_the_requested_size(fitted_patchcore: PatchCore) -> None:
    info = fitted_patchcore.fit_info_
    grid = (SIZE // 8) ** 2
    assert info["patches_seen"] == info["n_images"] * grid
    assert info["bank_size"] == round(0.1 * info["patches_seen"])
    assert fitted_patchcore.index_.ntotal == info["bank_size"]


def test_scores_defects_well_above_chance_with_maps_on_the_defects(patchcore_scorer: Scorer, dataset: Dataset) -> None:
    report, results = evaluate(patchcore_scorer, dataset, progress=False)
    assert report["image_auroc"] >= 0.9
    assert report["pixel_auroc"] >= 0.9
    assert report["aupro"] >= 0.6
    assert report["n_test"] == len(dataset.test())
    assert report["ms_per_image"] > 0
    good = [r.score for r in results if not r.sample.is_defect]
    bad = [r.score for r in results if r.sample.is_defect]
    assert np.median(bad) > np.max(good) * 0.9


def test_score_returns_maps_at_input_size_and_stage_timings(fitted_patchcore: PatchCore, dataset: Dataset) -> None:
    images = [read_image(s.path) for s in dataset.test()[:3]]
    result = fitted_patchcore.score(images)
    assert result.scores.shape == (3,)
    assert result.maps.shape == (3, SIZE, SIZE)
    assert np.all(np.isfinite(result.maps))
    assert set(result.timings_ms) == {"preprocess", "features", "search", "postprocess"}
    # Batch scoring and one-at-a-time scoring agree.
    single = np.array([fitted_patchcore.score([im]).scores[0] for im in images])
    np.testing.assert_allclose(result.scores, single, rtol=1e-4)


def test_saved_model_scores_identically(fitted_patchcore: PatchCore, patchcore_dir: Path, dataset: Dataset) -> None:
    images = [read_image(s.path) for s in dataset.test()[:4]]
    before = fitted_patchcore.score(images)
    loaded = load_scorer(patchcore_dir)
    assert isinstance(loaded, PatchCoreScorer)
    after = loaded.score(images)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5)
    np.testing.assert_allclose(after.maps, before.maps, rtol=1e-5, atol=1e-4)
    assert read_manifest(patchcore_dir)["params"]["coreset_ratio"] == fitted_patchcore.coreset_ratio


def test_torch_runtime_runs_the_same_network_as_the_onnx_export(dataset: Dataset) -> None:
    images = [read_image(s.path) for s in dataset.test()[:4]]
    params = {"image_size": SIZE, "coreset_ratio": 0.1}
    onnx = PatchCore(**params).fit(dataset.train()[:8], progress=False)
    torch_model = PatchCore(runtime="torch", **params).fit(dataset.train()[:8], progress=False)
    assert torch_model.scorer_.runtime == "torch"
    np.testing.assert_allclose(torch_model.score(images).scores, onnx.score(images).scores, rtol=1e-3)


def test_save_leaves_the_fitted_model_unchanged(fitted_patchcore: PatchCore, tmp_path: Path) -> None:
    before = dict(vars(fitted_patchcore))
    fitted_patchcore.save(tmp_path / "model", data={"category": "elsewhere"})
    assert vars(fitted_patchcore).keys() == before.keys()
    assert all(vars(fitted_patchcore)[k] is v for k, v in before.items())


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_index_and_reweighting_still_separate_defects(dataset: Dataset, index: str, tmp_path: Path) -> None:
    model = create_model(
        "patchcore", image_size=SIZE, coreset_ratio=0.1, index=index, image_score="reweighted", embed_dim=64
    )
    model.fit(dataset.train()[:12], progress=False)
    assert isinstance(model, PatchCore)
    assert model.memory_bank_.shape[1] == 64
    report, _ = evaluate(load_scorer(model.save(tmp_path / "m")), dataset, progress=False)
    assert report["image_auroc"] >= 0.85


def test_image_score_is_read_off_the_heatmap_the_operator_sees(
    patchcore_dir: Path, dataset: Dataset, tmp_path: Path
) -> None:
    images = [read_image(s.path) for s in dataset.test()[:4]]
    result = load_scorer(patchcore_dir).score(images)
    # The mean of the map's highest 1% of pixels: never above the peak, so a failing image has pixels to show.
    pixels = np.sort(result.maps.reshape(len(images), -1), axis=1)[:, ::-1]
    top = int(pixels.shape[1] * 0.01)
    np.testing.assert_allclose(result.scores, pixels[:, :top].mean(axis=1), rtol=1e-5)
    assert np.all(result.scores < pixels[:, 0])
    shutil.copytree(patchcore_dir, tmp_path / "m")
    scorer = load_scorer(tmp_path / "m")
    assert isinstance(scorer, PatchCoreScorer)
    scorer.map_top_fraction = 0.0
    np.testing.assert_allclose(scorer.score(images).scores, pixels[:, 0], rtol=1e-6)
    # The paper's raw patch maximum is still there: it is the peak before the map is smoothed, so never lower.
    scorer.image_score = "patch"
    raw = scorer.score(images).scores
    assert np.all(raw >= pixels[:, 0] - 1e-4)
    assert np.any(raw > pixels[:, 0])


def test_patch_distance_is_divided_by_the_nearest_entrys_spacing(patchcore_dir: Path, dataset: Dataset) -> None:
    scorer = load_scorer(patchcore_dir)
    assert isinstance(scorer, PatchCoreScorer) and scorer.spacing is not None
    assert abs(float(scorer.spacing.mean()) - 1.0) < 1e-4 and scorer.spacing.std() > 0
    outputs = scorer.runner(scorer.preprocessing([read_image(s.path) for s in dataset.test()[:2]]))
    _, weighted = scorer._patch_scores(outputs)
    scorer.spacing = None
    _, bare = scorer._patch_scores(outputs)
    _, nearest = scorer.index.search(patch_rows(outputs[0]), 1)
    spacing = load_scorer(patchcore_dir).spacing
    assert spacing is not None
    np.testing.assert_allclose(weighted.ravel() * spacing[nearest[:, 0]], bare.ravel(), rtol=1e-5)


def test_a_model_fitted_without_spacing_scores_bare_distances(dataset: Dataset, tmp_path: Path) -> None:
    model = create_model("patchcore", image_size=SIZE, coreset_ratio=0.1, density_neighbors=None)
    model.fit(dataset.train()[:6], progress=False)
    scorer = load_scorer(model.save(tmp_path / "m"))
    assert isinstance(scorer, PatchCoreScorer) and scorer.spacing is None
    outputs = scorer.runner(scorer.preprocessing([read_image(dataset.test()[0].path)]))
    distances, _ = scorer.index.search(patch_rows(outputs[0]), 1)
    np.testing.assert_allclose(scorer._patch_scores(outputs)[1].ravel(), distances[:, 0], rtol=1e-6)


def test_parameters_are_stored_unchanged_and_validated_by_fit() -> None:
    model = PatchCore(image_score="mean", layers=[2, 3])  # type: ignore[arg-type]
    assert model.layers == [2, 3]  # not converted
    with pytest.raises(ParameterError, match="image_score must be one of"):
        model.fit([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ParameterError, match="density_neighbors must be a positive integer or None"):
        PatchCore(density_neighbors=0).fit([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ParameterError, match=r"map_top_fraction must be in \[0, 1\)"):
        PatchCore(map_top_fraction=1.0).fit([np.zeros((8, 8, 3), np.uint8)])


def test_get_params_and_set_params_round_trip() -> None:
    model = PatchCore(coreset_ratio=0.05, index="hnsw", image_size=(96, 128))
    params = model.get_params()
    assert params["image_size"] == (96, 128)
    assert PatchCore(**params).get_params() == params
    clone = PatchCore().set_params(**params)
    assert clone.get_params() == params
    with pytest.raises(ParameterError, match="no parameter 'colour'"):
        model.set_params(colour="red")


def test_fitting_does_not_touch_the_global_torch_rng(dataset: Dataset) -> None:
    import torch

    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    PatchCore(image_size=SIZE, coreset_ratio=0.1, embed_dim=32).fit(dataset.train()[:4], progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_unfitted_model_and_empty_training_set_are_clear_errors() -> None:
    model = PatchCore()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.score([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ParameterError, match="no training images"):
        model.fit([])


@pytest.mark.parametrize(
    ("index", "knob"), [("ivf", {"nprobe": 3}), ("hnsw", {"ef_search": 5}), ("hnsw", {"hnsw_m": 12})]
)
def test_approximate_search_settings_are_kept_with_the_model_and_used_by_the_line(
    dataset: Dataset, tmp_path: Path, index: str, knob: dict[str, int]
) -> None:
    model = PatchCore(image_size=SIZE, coreset_ratio=0.5, index=index, threads=2, **knob)  # type: ignore[arg-type]
    assert model.get_params().items() >= knob.items()
    model.fit(dataset.train()[:12], progress=False)
    scorer = load_scorer(model.save(tmp_path / index))
    assert isinstance(scorer, PatchCoreScorer)
    name, value = next(iter(knob.items()))
    assert getattr(scorer.index, name) == value
    images = [read_image(s.path) for s in dataset.test()[:3]]
    np.testing.assert_allclose(scorer.score(images).scores, model.score(images).scores, rtol=1e-5)
    with pytest.raises(ParameterError, match=f"{name} must be a positive integer"):
        PatchCore(index=index, **{name: 0}).fit([np.zeros((32, 32, 3), np.uint8)])  # type: ignore[arg-type]


def test_patches_are_held_in_float16_unless_float32_is_asked_for(dataset: Dataset) -> None:
    """float16 patches take half the memory; the bank is their float32 widening, and the search index holds it in
    float16 again. float32 keeps the bank exact."""
    kwargs = {"image_size": SIZE, "coreset_ratio": 0.1, "threads": 2}
    banks = {}
    for precision in ("float16", "float32"):
        model = PatchCore(coreset_precision=precision, **kwargs).fit(dataset.train(), progress=False)  # type: ignore[arg-type]
        banks[precision] = model.memory_bank_
        assert model.index_.stored_dtype == precision  # the HNSW graph holds the bank at the patches' precision
        report, _ = evaluate(model.scorer_, dataset, progress=False)
        assert report["image_auroc"] >= 0.9
    assert PatchCore().coreset_precision == "float16"
    assert all(bank.dtype == np.float32 for bank in banks.values())
    half, single = banks["float16"], banks["float32"]
    np.testing.assert_array_equal(half, half.astype(np.float16).astype(np.float32))  # float16 values
    assert not np.array_equal(single, single.astype(np.float16).astype(np.float32))  # float32 values
    with pytest.raises(ParameterError, match="coreset_precision must be one of"):
        PatchCore(coreset_precision="float8").fit([np.zeros((32, 32, 3), np.uint8)])  # type: ignore[arg-type]


def test_past_the_memory_budget_the_fit_spills_and_keeps_the_bank_or_streams_a_smaller_pool(
    dataset: Dataset, tmp_path: Path
) -> None:
    """The default fallback gives the bank the patches held in memory give; "stream" trades it for bounded disk."""
    kwargs = {"image_size": SIZE, "coreset_ratio": 0.1, "threads": 2, "batch_size": 4}
    images = dataset.train()[:8]
    held = PatchCore(**kwargs).fit(images, progress=False)  # type: ignore[arg-type]
    spilled = PatchCore(coreset_budget_mb=0.01, coreset_spill_dir=str(tmp_path), **kwargs).fit(images, progress=False)  # type: ignore[arg-type]
    streamed = PatchCore(coreset_budget_mb=0.01, coreset_fallback="stream", **kwargs).fit(images, progress=False)  # type: ignore[arg-type]
    assert not held.fit_info_["coreset_spilled"] and held.fit_info_["coreset_exact"]
    assert spilled.fit_info_["coreset_spilled"] and spilled.fit_info_["coreset_exact"]
    assert not streamed.fit_info_["coreset_spilled"] and not streamed.fit_info_["coreset_exact"]
    np.testing.assert_array_equal(spilled.memory_bank_, held.memory_bank_)
    assert streamed.memory_bank_.shape == held.memory_bank_.shape
    assert not np.array_equal(streamed.memory_bank_, held.memory_bank_)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ParameterError, match="coreset_fallback must be one of spill, stream"):
        PatchCore(coreset_fallback="disk").fit(images)  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match=r"coreset_spill_dir .* is not a directory"):
        PatchCore(coreset_spill_dir=str(tmp_path / "missing")).fit(images)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_patch_rows_are_the_patches_in_image_then_row_order(dtype: type) -> None:
    embedding = np.random.default_rng(0).random((3, 16, 12, 10)).astype(dtype)[:, :, ::2, :]  # a strided view
    expected = np.stack([embedding[i, :, y, x] for i in range(3) for y in range(6) for x in range(10)])
    rows = patch_rows(embedding)
    assert rows.dtype == dtype and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, expected)
