"""How fast is the feature network at batch 1? timm dynamic 'SAME' padding vs static padding vs onnxruntime.

Measures the median milliseconds of one forward pass of `tf_efficientnet_lite0` cut at stage 4 (the stages
PatchCore uses), batch 1, on the given number of threads, for:
  torch-dynamic   timm as shipped (padding computed in Python on every call)
  torch-static    the same weights with the padding frozen for the input size (inspector's torch runtime)
  onnxruntime     the static network exported to ONNX (inspector's default runtime)

    python scripts/bench_backbone.py --size 256 --threads 2 --repeats 200
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from inspector.features.backbones import load_backbone, make_padding_static
from inspector.runtime.export import export_onnx
from inspector.runtime.onnx import OnnxRunner


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dynamic, _ = load_backbone(args.backbone, (2, 3))
    static = make_padding_static(copy.deepcopy(dynamic), (args.size, args.size))
    x = torch.rand(1, 3, args.size, args.size)
    runner = OnnxRunner(export_onnx(static, (args.size, args.size), n_outputs=2), threads=args.threads)
    x_np = x.numpy()
    with torch.inference_mode():
        reference = [t.numpy() for t in static(x)]
        rows = {
            "torch-dynamic": median_ms(lambda: dynamic(x), args.repeats),
            "torch-static": median_ms(lambda: static(x), args.repeats),
        }
    rows["onnxruntime"] = median_ms(lambda: runner(x_np), args.repeats)
    max_diff = max(float(np.abs(a - b).max()) for a, b in zip(runner(x_np), reference, strict=True))
    print(f"{args.backbone} stages 2-3, {args.size}x{args.size}, batch 1, {args.threads} threads")
    for name, ms in rows.items():
        print(f"  {name:<15}{ms:8.2f} ms")
    print(f"  max |onnxruntime - torch| = {max_diff:.2e}")


if __name__ == "__main__":
    main()
