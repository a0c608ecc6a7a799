"""Fit settings: a category config, then flags; a flag that changes the image size keeps the config's crop in
proportion, and a crop that cannot fit is refused with a message naming both settings."""

from __future__ import annotations

import pytest

from inspector.common.errors import ParameterError
from inspector.models.estimators import PatchCore
from inspector.models.settings import PACKAGE_CONFIGS, read_config, resolve_fit_settings


def test_image_size_alone_scales_the_configs_crop() -> None:
    screw = read_config(PACKAGE_CONFIGS / "screw.yaml")  # 320 px cropped to 288
    _, params = resolve_fit_settings(screw, None, {"image_size": 256, "crop_size": None})
    assert params["image_size"] == 256
    assert params["crop_size"] == 230  # 288 / 320 of 256: the same field of view


def test_both_flags_are_taken_as_given() -> None:
    _, params = resolve_fit_settings(
        read_config(PACKAGE_CONFIGS / "screw.yaml"), None, {"image_size": 256, "crop_size": 224}
    )
    assert (params["image_size"], params["crop_size"]) == (256, 224)


def test_a_set_value_of_null_is_kept_where_a_flag_left_out_is_not() -> None:
    config = {"patchcore": {"density_neighbors": 9, "coreset_budget_mb": 256.0}}
    overrides = {"coreset_budget_mb": None}  # a flag not given
    _, params = resolve_fit_settings(config, "patchcore", overrides, {"density_neighbors": None})
    assert params["density_neighbors"] is None  # --set density_neighbors=null: the bare distance
    assert params["coreset_budget_mb"] == 256.0
    assert PatchCore(**params).density_neighbors is None


def test_a_crop_larger_than_the_image_is_refused_naming_both_settings() -> None:
    with pytest.raises(ParameterError, match=r"crop_size 288 does not fit in image_size 256"):
        PatchCore(image_size=256, crop_size=288).fit([])
