"""From patch scores to what the operator sees and the verdict reads: the smoothed map and its image score."""

from __future__ import annotations

import numpy as np
import pytest

from inspector.components.postprocess import smooth_maps, top_mean


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.05, 0.5, 0.99])
@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 7, 5), (1, 1, 1)])
def test_top_mean_is_the_mean_of_the_highest_pixels(shape: tuple[int, int, int], fraction: float) -> None:
    maps = np.random.default_rng(0).random(shape).astype(np.float32)
    maps[0, : shape[1] // 2] = maps[0].max()  # ties at the top
    top = max(1, int(maps[0].size * fraction))
    expected = np.sort(maps.reshape(len(maps), -1), axis=1)[:, ::-1][:, :top].mean(axis=1, dtype=np.float64)
    np.testing.assert_allclose(top_mean(maps, fraction), expected, rtol=1e-6)


def test_top_mean_of_a_smoothed_map_lies_between_its_mean_and_its_peak() -> None:
    patches = np.zeros((1, 16, 16), np.float32)
    patches[0, 5, 9] = 10.0  # one anomalous patch
    maps = smooth_maps(patches, (128, 128), sigma=4.0)
    score = top_mean(maps, 0.01)[0]
    assert maps.mean() < score < maps.max()
    assert top_mean(maps, 0.0)[0] == maps.max()
