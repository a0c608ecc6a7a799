"""Running the feature network: torch, or the same graph exported to ONNX under onnxruntime.

onnxruntime runs the truncated EfficientNet-Lite0 at 256 px in about a quarter of torch's time on 2 CPU cores
(docs/benchmarks.md), and a line box scoring with it needs no training stack. Both runners take and return
numpy arrays, so models never care which one they got.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

RUNTIMES = ("auto", "onnxruntime", "torch")


def cpu_threads(threads: int | None) -> int:
    """The thread count to use: as asked, else every core this process may run on."""
    if threads:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class TorchRunner:
    """Runs a module under inference mode on CUDA when present, else CPU."""

    name = "torch"

    def __init__(self, module: nn.Module, threads: int | None = None, device: str = "auto") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        torch.set_num_threads(cpu_threads(threads))
        self.module = module.eval().to(self.device)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch).to(self.device))
        outputs = out if isinstance(out, (list, tuple)) else [out]
        return [o.float().cpu().numpy() for o in outputs]


class OnnxRunner:
    """Runs an exported graph with onnxruntime (CUDA provider first when onnxruntime-gpu has a GPU)."""

    name = "onnxruntime"

    def __init__(self, model: bytes | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Without the arena, activation buffers go back to the system after each run: 100 MiB less peak memory
        # fitting at batch 8, and no slower at batch 1 (measured, docs/benchmarks.md).
        options.enable_cpu_mem_arena = False
        # Idle ORT threads otherwise spin for a while after each run and starve the FAISS search that follows.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})


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
            buffer,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
