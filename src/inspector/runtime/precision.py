"""Reduced-precision variants of an exported network: fp16 (onnxruntime's float16 conversion) and int8
(onnxruntime static quantisation, calibrated on training images kept with the model).

Needs the `onnx` package (the fit extra); the line box only runs the result. Whether a variant is good enough is
not decided here: export.parity compares it with the fitted model and refuses it if it disagrees.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from inspector.common.errors import InspectorError

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")


class PrecisionError(InspectorError, RuntimeError):
    """A precision that cannot be produced here (its converter is missing, or no calibration images)."""


def convert_network(network: bytes, precision: Precision, calibration_batch: np.ndarray | None = None) -> bytes:
    """The network at `precision`; fp32 is returned unchanged. `calibration_batch` ((B, 3, H, W) float32, the
    golden set's training images) sets int8's activation ranges."""
    if precision == "fp32":
        return network
    try:
        import onnx
    except ImportError as exc:
        raise PrecisionError(f'{precision} export needs the onnx package: pip install "inspector[fit]"') from exc
    if precision == "fp16":
        return _to_fp16(onnx, network)
    if precision == "int8":
        if calibration_batch is None or len(calibration_batch) == 0:
            raise PrecisionError("int8 export needs calibration images; this model has no golden training images")
        return _to_int8(network, calibration_batch)
    raise PrecisionError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def _to_fp16(onnx: object, network: bytes) -> bytes:
    """Weights and arithmetic in float16; the graph still takes and returns float32, so callers do not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load_from_string(network)  # type: ignore[attr-defined]
    return bytes(convert_float_to_float16(model, keep_io_types=True).SerializeToString())


def _to_int8(network: bytes, calibration_batch: np.ndarray) -> bytes:
    """QDQ static quantisation: int8 weights per output channel, uint8 activations with ranges from the
    calibration images. Only convolutions and matrix products are quantised; the method's arithmetic after them
    (distances, flows' likelihoods) stays float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Images(CalibrationDataReader):
        def __init__(self, input_name: str) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = (
                {input_name: calibration_batch[i : i + 1]} for i in range(len(calibration_batch))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="inspector-int8-") as tmp:
        source, prepared, target = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(network)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            Images("image"),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return target.read_bytes()
