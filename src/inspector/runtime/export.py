"""A torch module -> ONNX bytes with a dynamic batch axis: the one graph the line box runs."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn


def export_onnx(module: nn.Module, input_size: tuple[int, int], n_outputs: int) -> bytes:
    """Trace `module` on a (B, 3, H, W) input with a dynamic batch axis; returns the ONNX bytes."""
    module = module.eval().cpu()
    example = torch.zeros(1, 3, *input_size)
    outputs = [f"out{i}" for i in range(n_outputs)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,  # type: ignore[arg-type]  # a file object is accepted; the stub says path only
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()
