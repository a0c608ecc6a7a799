"""The names a user chooses from, as types: mypy checks every use, and `choices` gives argparse its list.

Dependency-free on purpose, so that building the CLI parser imports no numpy, torch or FAISS.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

ModelKind = Literal["patchcore", "padim", "fastflow"]
IndexKind = Literal["flat", "ivf", "hnsw"]
ImageScore = Literal["map", "patch", "reweighted"]
Runtime = Literal["onnxruntime", "torch"]
CoresetPrecision = Literal["float32", "float16"]
CoresetFallback = Literal["spill", "stream"]

DEFAULT_MODEL_KIND: ModelKind = "patchcore"


def choices(names: Any) -> tuple[str, ...]:
    """The values of a Literal type, in order: `choices(IndexKind)` -> ("flat", "ivf", "hnsw")."""
    return get_args(names)
