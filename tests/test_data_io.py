"""Loading images the way a line delivers them, and the MVTec folder layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.data import CategoryNotFoundError, Dataset, ImageReadError, read_image, read_mask
from inspector.data.io import decode_image


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("gray8.png", np.full((20, 30), 200, np.uint8)),
        ("gray16.png", np.full((20, 30), 65535, np.uint16)),
        ("bgr.bmp", np.dstack([np.full((20, 30), v, np.uint8) for v in (10, 20, 30)])),
        ("bgra.png", np.dstack([np.full((20, 30), v, np.uint8) for v in (10, 20, 30, 128)])),
        ("rgb16.tif", np.dstack([np.full((20, 30), v, np.uint16) for v in (0, 32896, 65535)])),
        ("jpeg.jpg", np.full((20, 30, 3), 90, np.uint8)),
    ],
)
def test_any_format_becomes_rgb_uint8(tmp_path: Path, name: str, array: np.ndarray) -> None:
    image = read_image(_write(tmp_path / name, array))
    assert image.dtype == np.uint8
    assert image.shape == (20, 30, 3)


def test_channel_order_and_bit_depth_are_converted(tmp_path: Path) -> None:
    bgr16 = np.dstack([np.full((4, 4), v, np.uint16) for v in (0, 32896, 65535)])  # B, G, R
    rgb = read_image(_write(tmp_path / "x.png", bgr16))
    assert rgb[0, 0].tolist() == [255, 128, 0]
    assert read_image(_write(tmp_path / "g.png", np.full((4, 4), 65535, np.uint16)))[0, 0].tolist() == [255] * 3


def test_corrupt_file_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        read_image(bad)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg"):
        read_image(empty)
    with pytest.raises(ImageReadError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError):
        decode_image(b"hello")


def test_masks_are_binarised_above_127(tmp_path: Path) -> None:
    mask = np.array([[0, 127, 128, 255]], np.uint8).repeat(2, axis=0)
    assert read_mask(_write(tmp_path / "m.png", mask)).tolist()[0] == [False, False, True, True]


def _category(root: Path, with_masks: bool, sizes: tuple[tuple[int, int], ...] = ((32, 40), (50, 30))) -> Path:
    cat = root / "parts"
    for i, (h, w) in enumerate(sizes):
        _write(cat / "train" / "good" / f"{i}.png", np.zeros((h, w, 3), np.uint8))
        _write(cat / "test" / "good" / f"{i}.jpg", np.zeros((h, w), np.uint8))
        _write(cat / "test" / "dent" / f"{i}.png", np.zeros((h, w, 3), np.uint8))
    if with_masks:
        _write(cat / "ground_truth" / "dent" / "0_mask.png", np.full(sizes[0], 255, np.uint8))
    return cat


def test_dataset_lists_samples_and_masks(tmp_path: Path) -> None:
    _category(tmp_path, with_masks=True)
    ds = Dataset(tmp_path, "parts")
    assert [p.name for p in ds.train()] == ["0.png", "1.png"]
    test = ds.test()
    assert [s.defect_type for s in test] == ["good", "good", "dent", "dent"]
    assert ds.has_masks
    assert test[2].mask_path is not None
    assert test[2].mask_path.name == "0_mask.png"
    assert test[3].mask_path is None  # a defect image without its mask file is listed, just unmasked
    assert ds.validation() == []


def test_dataset_without_ground_truth_has_no_masks(tmp_path: Path) -> None:
    _category(tmp_path, with_masks=False)
    ds = Dataset(tmp_path, "parts")
    assert not ds.has_masks
    assert all(s.mask_path is None for s in ds.test())


def test_missing_category_says_where_it_looked_and_how_to_get_data(tmp_path: Path) -> None:
    with pytest.raises(CategoryNotFoundError) as err:
        Dataset(tmp_path, "bottle")
    message = str(err.value)
    assert str(tmp_path / "bottle" / "train" / "good") in message
    assert "mvtec.com" in message
    assert "CC BY-NC-SA" in message
