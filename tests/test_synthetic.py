"""The generated demo/test category: MVTec layout, binary masks on the defects, deterministic under a seed."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.data import Dataset, read_image, read_mask
from inspector.data.synthetic import DEFECT_TYPES, make_category


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_layout_counts_and_masks(tmp_path: Path) -> None:
    path = make_category(tmp_path, "syn", n_train=4, n_test_good=2, n_test_defect_per_type=2, size=64, seed=1)
    assert path == tmp_path / "syn"
    assert _names(path / "train" / "good") == ["000.png", "001.png", "002.png", "003.png"]
    assert _names(path / "test") == sorted(["good", *DEFECT_TYPES])
    assert _names(path / "test" / "good") == ["000.png", "001.png"]
    assert _names(path / "ground_truth") == sorted(DEFECT_TYPES)
    for defect in DEFECT_TYPES:
        assert _names(path / "test" / defect) == ["000.png", "001.png"]
        assert _names(path / "ground_truth" / defect) == ["000_mask.png", "001_mask.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]  # no temporary folders left beside it

    ds = Dataset(tmp_path, "syn")
    assert len(ds.train()) == 4
    test = ds.test()
    assert sum(not s.is_defect for s in test) == 2
    assert {s.defect_type for s in test if s.is_defect} == set(DEFECT_TYPES)
    for sample in test:
        image = read_image(sample.path)
        assert image.shape == (64, 64, 3)
        if sample.is_defect:
            assert sample.mask_path is not None
            mask = read_mask(sample.mask_path)
            assert mask.shape == image.shape[:2]
            assert 0 < mask.mean() < 0.2


def test_masks_are_binary_png_and_defects_small(tmp_path: Path) -> None:
    path = make_category(tmp_path, "syn", n_train=0, n_test_good=0, n_test_defect_per_type=3, size=128, seed=2)
    for defect in DEFECT_TYPES:
        for i in range(3):
            raw = cv2.imread(str(path / "ground_truth" / defect / f"{i:03d}_mask.png"), cv2.IMREAD_UNCHANGED)
            image = cv2.imread(str(path / "test" / defect / f"{i:03d}.png"), cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint8
            assert raw.ndim == 2
            assert image.shape == (*raw.shape, 3)
            assert set(np.unique(raw)) == {0, 255}
            area = (raw > 0).mean()
            assert 0.0005 < area < 0.05, (defect, i, area)  # visible, but a few % of the image at most


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_category(tmp_path, name, n_train=2, n_test_good=1, n_test_defect_per_type=1, size=48, seed=seed)
    a_files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert a_files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    for rel in a_files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
        if "ground_truth" not in rel.parts:
            assert not np.array_equal(read_image(tmp_path / "a" / rel), read_image(tmp_path / "c" / rel)), rel


def test_good_images_vary_but_stay_alike(tmp_path: Path) -> None:
    path = make_category(tmp_path, "syn", n_train=3, n_test_good=0, n_test_defect_per_type=0, size=64)
    images = [read_image(p).astype(np.float32) for p in sorted((path / "train" / "good").iterdir())]
    diffs = [np.abs(images[0] - other).mean() for other in images[1:]]
    assert all(1.0 < d < 40.0 for d in diffs), diffs  # jittered, yet the same kind of part


def test_existing_category_is_reused_replaced_or_refused(tmp_path: Path) -> None:
    path = make_category(tmp_path, "syn", n_train=1, n_test_good=1, n_test_defect_per_type=1, size=32)
    stamp = (path / "train" / "good" / "000.png").stat().st_mtime_ns
    assert make_category(tmp_path, "syn", n_train=1, n_test_good=1, n_test_defect_per_type=1, size=32) == path
    assert (path / "train" / "good" / "000.png").stat().st_mtime_ns == stamp  # same arguments: reused

    make_category(tmp_path, "syn", n_train=2, n_test_good=1, n_test_defect_per_type=1, size=32)
    assert len(list((path / "train" / "good").iterdir())) == 2  # other arguments: regenerated
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        make_category(tmp_path, "mine", n_train=1, n_test_good=1, n_test_defect_per_type=1, size=32)
    assert _names(tmp_path / "mine") == ["keep.txt"]
