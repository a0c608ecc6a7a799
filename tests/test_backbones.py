"""Backbone weights: offline packages load strictly, local files work, and nothing falls back to random."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inspector.features.backbones import BackboneWeightsError, load_backbone, make_padding_static


def test_offline_package_weights_load_completely_and_are_not_random() -> None:
    model, info = load_backbone("tf_efficientnet_lite0", (2, 3))
    assert info.channels == (40, 112)
    assert info.strides == (8, 16)
    assert info.weights_source.startswith("package:")
    assert info.mean == (0.5, 0.5, 0.5)
    assert info.weights_sha256 == load_backbone("tf_efficientnet_lite0", (2, 3))[1].weights_sha256
    # ImageNet BN statistics are far from the initialisation defaults (mean 0, var 1).
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))


def test_local_weights_file_gives_the_same_network(tmp_path: Path) -> None:
    model, info = load_backbone("tf_efficientnet_lite0", (2, 3))
    file = tmp_path / "lite0.pth"
    torch.save(model.state_dict(), file)
    _, from_file = load_backbone("tf_efficientnet_lite0", (2, 3), weights=file)
    assert from_file.weights_sha256 == info.weights_sha256
    assert from_file.weights_source.startswith("file:")


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "wrong.pth"
    torch.save({"conv_stem.weight": torch.zeros(32, 3, 3, 3)}, file)
    with pytest.raises(BackboneWeightsError, match="missing"):
        load_backbone("tf_efficientnet_lite0", (2, 3), weights=file)
    with pytest.raises(BackboneWeightsError, match="not found"):
        load_backbone("tf_efficientnet_lite0", (2, 3), weights=tmp_path / "absent.pth")


def test_no_weights_offline_is_a_clear_error_not_a_random_init() -> None:
    with pytest.raises(BackboneWeightsError) as err:
        load_backbone("wide_resnet50_2", (2, 3), allow_download=False)
    assert "wide_resnet50_2" in str(err.value)
    assert "--weights" in str(err.value)
    with pytest.raises(BackboneWeightsError, match="unknown backbone"):
        load_backbone("no_such_net", (2, 3))


def test_static_padding_matches_dynamic_padding() -> None:
    model, _ = load_backbone("tf_efficientnet_lite0", (2, 3))
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        dynamic = model(x)
        static = make_padding_static(model, (96, 128))(x)
    for a, b in zip(dynamic, static, strict=True):
        torch.testing.assert_close(a, b)
