"""The feature network under onnxruntime: what the line box runs, with no torch in the process.

onnxruntime runs the truncated EfficientNet-Lite0 at 256 px in about a quarter of torch's time on 2 CPU cores
(docs/benchmarks.md). With onnxruntime-gpu (the `gpu` extra) and a GPU, TensorRT or CUDA runs it instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inspector.common.system import cpu_threads
from inspector.runtime.precision import Precision

log = logging.getLogger(__name__)

# Fastest first; CPU is always last, so a GPU provider that fails to start still leaves one that works.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def trt_cache_dir() -> Path:
    """Where TensorRT keeps its built engines: building one takes minutes, so a restart must find it again."""
    return Path(os.environ.get("INSPECTOR_TRT_CACHE") or Path.home() / ".cache" / "inspector" / "trt")


def choose_providers(
    available: list[str] | None = None, precision: Precision = "fp32"
) -> list[str | tuple[str, dict[str, Any]]]:
    """The preferred providers this onnxruntime build has, fastest first, each with its options if any.

    Only available ones are named: onnxruntime warns about, or refuses, a provider it was built without.
    TensorRT builds at the precision the network was exported and checked at (`precision`, the bundle's): fp16
    kernels only for an fp16 network, so an fp32 model scores as its parity gate measured it. An int8 network
    is left to CUDA: TensorRT takes Q/DQ graphs only with symmetric int8 activations (zero point 0), and export
    writes asymmetric uint8 ones."""
    available = ort.get_available_providers() if available is None else available
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for name in PREFERRED_PROVIDERS:
        if name not in available:
            continue
        if name == "TensorrtExecutionProvider":
            if precision == "int8":
                continue
            options = {
                "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(trt_cache_dir()),
            }
            chosen.append((name, options))
        else:
            chosen.append(name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")  # every build has it, even where the list left it out
    return chosen


class OnnxRunner:
    """Runs an exported graph with onnxruntime on the fastest provider that starts (TensorRT, CUDA, then CPU).

    `threads` sets this session's own intra-op pool; unlike FAISS's or torch's it is not process-wide.
    `precision` is the network's ("fp32", "fp16", "int8": a bundle's export precision) and picks TensorRT's.
    `provider` is the one onnxruntime actually runs on: a GPU provider whose libraries are missing falls back.
    """

    name = "onnxruntime"

    def __init__(self, model: bytes | Path, threads: int | None = None, precision: Precision = "fp32") -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Without the arena, activation buffers go back to the system after each run: lower peak memory fitting
        # at batch 8, and no slower at batch 1 (docs/benchmarks.md).
        options.enable_cpu_mem_arena = False
        # Idle ORT threads otherwise spin for a while after each run and starve the FAISS search that follows.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(precision=precision)
        if any(isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider" for p in providers):
            trt_cache_dir().mkdir(parents=True, exist_ok=True)
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.provider: str = self.session.get_providers()[0]
        log.info("onnxruntime runs the network on %s", self.provider)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.asarray(o) for o in outputs]
