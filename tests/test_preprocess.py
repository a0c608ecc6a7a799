"""Pre-processing: the faster resize gives the very pixels OpenCV's uint8 resize gave, so scores and maps of any
model stay what they were."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspector.data import Dataset, read_image
from inspector.features.preprocess import Preprocessing
from inspector.models.scoring import Scorer
from tests.conftest import SIZE


def reference_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """What Preprocessing did before: OpenCV's resize of the uint8 image, area to shrink, bilinear to enlarge."""
    shrink = image.shape[0] > h or image.shape[1] > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """Noise blurred to a photo-like texture (sharp noise alone rarely lands on a rounding edge)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(image, (5, 5), 1.5) if seed % 2 else image


@pytest.mark.parametrize(
    ("in_h", "in_w", "h", "w"),
    [
        (800, 800, 256, 256),  # a fractional shrink in both axes: the float path
        (1000, 837, 256, 256),
        (600, 900, 224, 320),
        (512, 768, 256, 256),  # whole factors: OpenCV's own fast path
        (300, 122, 256, 256),  # shrinks one axis, enlarges the other
        (100, 90, 256, 256),  # enlarges
        (256, 256, 256, 256),  # already the size
    ],
)
def test_resize_gives_the_pixels_the_uint8_resize_gave(in_h: int, in_w: int, h: int, w: int) -> None:
    for seed in range(4):
        image = textured(in_h, in_w, seed)
        np.testing.assert_array_equal(Preprocessing((h, w)).one(image), reference_resize(image, h, w))


def test_batch_is_float32_nchw_of_the_resized_pixels() -> None:
    images = [textured(800, 800, 1), textured(300, 500, 2)]
    batch = Preprocessing((256, 256))(images)
    assert batch.dtype == np.float32 and batch.shape == (2, 3, 256, 256)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(batch[i], reference_resize(image, 256, 256).transpose(2, 0, 1))


def test_a_large_input_scores_exactly_as_before(patchcore_scorer: Scorer, dataset: Dataset) -> None:
    image = cv2.resize(read_image(dataset.test()[-1].path), (5 * SIZE + 3, 6 * SIZE + 1))
    before = reference_resize(image, SIZE, SIZE).transpose(2, 0, 1)[None].astype(np.float32)
    expected = patchcore_scorer.score_batch(np.ascontiguousarray(before))
    result = patchcore_scorer.score([image])
    np.testing.assert_array_equal(result.scores, expected.scores)
    np.testing.assert_array_equal(result.maps, expected.maps)
