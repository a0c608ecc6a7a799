"""From patch scores to what the operator sees and the verdict reads: the smoothed map and its image score."""

from __future__ import annotations

import numpy as np
import pytest

from inspector.components.postprocess import smooth_maps, top_mean, upsample_and_blur


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


@pytest.mark.parametrize(
    ("shape", "size", "sigma"),
    [((32, 32), (256, 256), 5.0), ((28, 40), (224, 320), 4.0), ((7, 9), (61, 45), 8.0), ((16, 16), (128, 128), 0.0)],
)
def test_smoothing_by_matrix_products_gives_the_upsampled_blurred_map(
    shape: tuple[int, int], size: tuple[int, int], sigma: float
) -> None:
    """The fast path is the same map as resizing and blurring each image, to float32 rounding."""
    patches = np.random.default_rng(0).gamma(2.0, 1.0, size=(3, *shape)).astype(np.float32)
    maps = smooth_maps(patches, size, sigma)
    assert maps.shape == (3, *size) and maps.dtype == np.float32
    for patch_map, smoothed in zip(patches, maps, strict=True):
        reference = upsample_and_blur(patch_map, size, sigma)
        np.testing.assert_allclose(smoothed, reference, rtol=0, atol=2e-6 * float(reference.max()))
    np.testing.assert_allclose(smooth_maps(np.full((1, *shape), 3.5, np.float32), size, sigma), 3.5, rtol=1e-6)
