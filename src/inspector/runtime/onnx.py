"""The feature network under onnxruntime: what the line box runs, with no torch in the process.

onnxruntime runs the truncated EfficientNet-Lite0 at 256 px in about a quarter of torch's time on 2 CPU cores
(docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from inspector.common.system import cpu_threads


class OnnxRunner:
    """Runs an exported graph with onnxruntime (CUDA provider first when onnxruntime-gpu has a GPU).

    `threads` sets this session's own intra-op pool; unlike FAISS's or torch's it is not process-wide.
    """

    name = "onnxruntime"

    def __init__(self, model: bytes | Path, threads: int | None = None) -> None:
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
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return [np.asarray(o) for o in outputs]
