"""The FAISS core: exact and approximate search, and a save/load round trip that changes nothing."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from inspector.common.errors import ParameterError
from inspector.components.knn import (
    IndexLoadError,
    NearestNeighbourIndex,
    bank_spacing,
    holds_float16,
    relative_spacing,
)


@pytest.fixture
def bank() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2000, 24)).astype(np.float32)


def test_flat_search_is_exact_euclidean(bank: np.ndarray) -> None:
    queries = np.random.default_rng(1).normal(size=(50, 24)).astype(np.float32)
    dist, idx = NearestNeighbourIndex("flat").build(bank).search(queries, k=3)
    brute = np.linalg.norm(queries[:, None, :] - bank[None], axis=2)
    expected = np.sort(brute, axis=1)[:, :3]
    np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(idx[:, 0], brute.argmin(axis=1))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip_gives_identical_results(bank: np.ndarray, kind: str) -> None:
    queries = bank[:100] + 0.01
    index = NearestNeighbourIndex(kind).build(bank)
    restored = NearestNeighbourIndex(kind).from_bytes(index.to_bytes())
    assert restored.ntotal == len(bank)
    assert restored.dim == bank.shape[1]
    d1, i1 = index.search(queries)
    d2, i2 = restored.search(queries)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_true_neighbour_mostly(bank: np.ndarray, kind: str) -> None:
    queries = bank[:200] + np.float32(0.05)
    _, idx = NearestNeighbourIndex(kind).build(bank).search(queries)
    assert (idx[:, 0] == np.arange(200)).mean() > 0.9


def test_hnsw_over_float16_values_holds_them_in_float16_and_searches_as_float32_would(bank: np.ndarray) -> None:
    """PatchCore's default bank is float16 values widened to float32: the graph keeps them at half the bytes, and
    finds the neighbours a float32 graph finds, at the same distances up to float32 rounding."""
    half = bank.astype(np.float16).astype(np.float32)
    queries = np.random.default_rng(1).normal(size=(300, 24)).astype(np.float32)
    index = NearestNeighbourIndex("hnsw", ef_search=8, hnsw_m=16).build(half)
    assert index.stored_dtype == "float16"
    single = faiss.IndexHNSWFlat(24, 16)
    single.add(half)
    single.hnsw.efSearch = 8
    squared, expected = single.search(queries, 3)
    distances, nearest = index.search(queries, 3)
    np.testing.assert_array_equal(nearest, expected)
    np.testing.assert_allclose(distances, np.sqrt(squared), rtol=1e-6)

    saved = index.to_bytes()
    assert len(saved) < len(faiss.serialize_index(single).tobytes()) - len(half) * 24  # 2 bytes a value, not 4
    restored = NearestNeighbourIndex("hnsw", ef_search=8).from_bytes(saved)
    assert restored.stored_dtype == "float16"
    np.testing.assert_array_equal(restored.search(queries, 3)[1], nearest)


def test_a_bank_that_float16_would_round_stays_float32(bank: np.ndarray) -> None:
    assert not holds_float16(bank)
    assert NearestNeighbourIndex("hnsw").build(bank).stored_dtype == "float32"
    half = bank.astype(np.float16).astype(np.float32)
    assert holds_float16(half)
    assert NearestNeighbourIndex("flat").build(half).stored_dtype == "float32"  # exact search keeps its BLAS path
    assert not holds_float16(np.array([[1e6]], np.float32))  # beyond float16's range
    half[-1, -1] = np.float32(0.1)  # one value float16 would round, in the last slice checked
    assert not holds_float16(half, rows_at_a_time=7)


def test_bad_kind_and_damaged_bytes_are_clear_errors(bank: np.ndarray) -> None:
    with pytest.raises(ParameterError, match="unknown index kind"):
        NearestNeighbourIndex("annoy")
    with pytest.raises(IndexLoadError):
        NearestNeighbourIndex().from_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="empty"):
        NearestNeighbourIndex().search(bank[:1])


def test_relative_spacing_is_small_where_the_bank_is_crowded() -> None:
    rng = np.random.default_rng(0)
    crowded = rng.normal(scale=0.1, size=(50, 8))
    sparse = rng.normal(scale=5.0, size=(50, 8)) + 20.0
    spacing = relative_spacing(np.concatenate([crowded, sparse]).astype(np.float32), k=3)
    assert spacing.dtype == np.float32 and spacing.shape == (100,)
    assert abs(float(spacing.mean()) - 1.0) < 1e-5
    assert spacing[:50].max() < spacing[50:].min()


def test_bank_spacing_is_the_mean_distance_to_the_nearest_other_entries() -> None:
    line = np.array([[0.0], [1.0], [3.0], [7.0]], dtype=np.float32)
    np.testing.assert_allclose(bank_spacing(line, k=1), [1.0, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(bank_spacing(line, k=2), [2.0, 1.5, 2.5, 5.0])
    np.testing.assert_array_equal(bank_spacing(line[:1], k=3), np.zeros(1, np.float32))


def test_relative_spacing_stays_finite_on_duplicated_or_tiny_banks() -> None:
    twins = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], dtype=np.float32)
    spacing = relative_spacing(twins, k=1)
    assert np.all(np.isfinite(spacing)) and np.all(spacing > 0)
    assert spacing[0] == spacing[1] < spacing[3]
    np.testing.assert_array_equal(relative_spacing(np.zeros((5, 3), np.float32), k=2), np.ones(5, np.float32))
    np.testing.assert_array_equal(relative_spacing(np.ones((1, 3), np.float32), k=9), np.ones(1, np.float32))
