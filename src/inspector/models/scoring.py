"""The scoring half: a fitted model as the line runs it, with no torch and no timm in the process.

    preprocess (resize, crop) -> feature network (onnxruntime) -> the method's scoring step on numpy
    -> anomaly map (upsampled, smoothed) -> image score

PatchCore's scoring step is the FAISS search of its memory bank; PaDiM's and FastFlow's networks already end in
the patch score map, so theirs is a max. evaluate, predict, calibrate and the service all score through
`load_scorer`, and a freshly fitted estimator scores through the same classes, so what was validated is what
runs on the line.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from inspector.common.names import ModelKind
from inspector.components.knn import NearestNeighbourIndex
from inspector.components.postprocess import smooth_maps, top_mean
from inspector.features.preprocess import Preprocessing
from inspector.models.persistence import NETWORK_FILE, ModelDirError, read_model_dir
from inspector.models.registry import Registry
from inspector.runtime.onnx import OnnxRunner

Runner = Callable[[np.ndarray], list[np.ndarray]]


@dataclass
class ScoreResult:
    """Image scores (B,), anomaly maps (B, H, W) at the network's input size, and per-stage milliseconds."""

    scores: np.ndarray
    maps: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)


SCORERS: Registry[Scorer] = Registry("scorer")


class Scorer:
    """A fitted model ready to score: built from a model directory's manifest and files.

    `runner` is the feature network; by default the directory's network.onnx under onnxruntime with `threads`
    intra-op threads. A subclass says how network outputs become patch scores and reads its own state files.
    """

    kind: ClassVar[ModelKind]

    def __init_subclass__(cls, kind: ModelKind | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.kind = kind
            SCORERS.add(kind, cls)

    def __init__(
        self,
        manifest: dict[str, Any],
        files: dict[str, bytes],
        runner: Runner | None = None,
        threads: int | None = None,
        source: str = "<memory>",
    ) -> None:
        try:
            self.params: dict[str, Any] = dict(manifest["params"])
            self.preprocessing = Preprocessing.from_dict(manifest["preprocessing"])
            self._load_state(files)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{source}: manifest or state is incomplete or from another version ({exc})") from exc
        self.manifest = manifest
        self.fit_info: dict[str, Any] = manifest.get("fit", {})
        self.data_info: dict[str, Any] = manifest.get("data", {})
        self.blur_sigma = float(self.params.get("blur_sigma", 4.0))
        self.batch_size = max(1, int(self.params.get("batch_size") or 8))
        # A bundle's network may be fp16 or int8 (`inspector export`); a fitted model's is fp32.
        precision = manifest.get("export", {}).get("precision", "fp32")
        self.runner: Runner = runner or OnnxRunner(files[NETWORK_FILE], threads, precision)

    # ---- what a method defines ------------------------------------------------------------------------------

    def _load_state(self, files: dict[str, bytes]) -> None:
        """Read the method's state files (those the network does not already carry)."""

    def _patch_scores(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Network outputs -> (image scores (B,), patch score maps (B, h, w)); higher means more anomalous.

        The default is for heads whose network already outputs the (B, 1, h, w) patch score map."""
        patch_maps = outputs[0][:, 0]
        return patch_maps.reshape(len(patch_maps), -1).max(axis=1), patch_maps

    def _image_scores(self, patch_scores: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """The image scores to report, given those from `_patch_scores` and the finished maps."""
        return patch_scores

    # ---- scoring --------------------------------------------------------------------------------------------

    @property
    def runtime(self) -> str:
        """Which runtime runs the network, with its execution provider where it has one
        ("onnxruntime/CPUExecutionProvider"): a report or a benchmark must say whether a GPU ran it."""
        name = str(getattr(self.runner, "name", type(self.runner).__name__))
        return f"{name}/{self.provider}" if self.provider else name

    @property
    def provider(self) -> str | None:
        """The onnxruntime execution provider the network runs on; None for a runner without one (torch)."""
        provider = getattr(self.runner, "provider", None)
        return None if provider is None else str(provider)

    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        """Score decoded RGB uint8 images (any sizes) into image scores and anomaly maps."""
        t0 = time.perf_counter()
        batch = self.preprocessing(images)
        return self.score_batch(batch, {"preprocess": (time.perf_counter() - t0) * 1e3})

    def score_batch(self, batch: np.ndarray, timings_ms: dict[str, float] | None = None) -> ScoreResult:
        """Score an already preprocessed (B, 3, H, W) float32 batch at the network's input size (the golden set
        is kept that way)."""
        t1 = time.perf_counter()
        outputs = self.runner(batch)
        t2 = time.perf_counter()
        scores, patch_maps = self._patch_scores(outputs)
        t3 = time.perf_counter()
        maps = smooth_maps(patch_maps, self.preprocessing.input_size, self.blur_sigma)
        scores = self._image_scores(scores, maps)
        t4 = time.perf_counter()
        timings = {"features": t2 - t1, "search": t3 - t2, "postprocess": t4 - t3}
        timings_ms = {**(timings_ms or {}), **{k: v * 1e3 for k, v in timings.items()}}
        return ScoreResult(scores.astype(np.float64), maps, timings_ms)


class PatchCoreScorer(Scorer, kind="patchcore"):
    """A patch scores its Euclidean distance to the nearest memory-bank entry (FAISS).

    A model fitted with `density_neighbors` divides that distance by the nearest entry's relative spacing in the
    bank (`inspector.components.knn.relative_spacing`). The image score is, by default (`image_score="map"`), the
    mean of the finished anomaly map's highest `map_top_fraction` pixels (0: its peak), so the verdict rests on the
    very heatmap the operator sees; `"patch"` is the paper's max patch distance and `"reweighted"` its re-weighted
    one (docs/benchmarks.md compares them).
    """

    def _load_state(self, files: dict[str, bytes]) -> None:
        with np.load(io.BytesIO(files["memory_bank.npz"])) as state:
            self.memory_bank = state["memory_bank"]
            self.spacing: np.ndarray | None = state.get("spacing")
        index = NearestNeighbourIndex(
            self.params.get("index", "flat"),
            nprobe=int(self.params.get("nprobe", 8)),
            ef_search=int(self.params.get("ef_search", 64)),
        )
        self.index = index.from_bytes(files["index.faiss"])
        self.image_score = self.params.get("image_score", "map")
        self.num_neighbors = int(self.params.get("num_neighbors", 9))
        self.map_top_fraction = float(self.params.get("map_top_fraction", 0.0))

    def _patch_scores(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        embedding = outputs[0]
        b, _, h, w = embedding.shape
        patches = patch_rows(embedding)
        distances, nearest = self.index.search(patches, 1)
        if self.spacing is not None:
            distances[:, 0] /= self.spacing[nearest[:, 0]]
        patch_maps = distances[:, 0].reshape(b, h, w)
        scores = patch_maps.reshape(b, -1).max(axis=1)
        if self.image_score == "reweighted":
            scores = self._reweighted(patches.reshape(b, h * w, -1), patch_maps, nearest[:, 0].reshape(b, -1))
        return scores, patch_maps

    def _reweighted(self, patches: np.ndarray, patch_maps: np.ndarray, nearest: np.ndarray) -> np.ndarray:
        """The paper's image score: scale the max patch distance down when its nearest bank entry sits in a
        dense neighbourhood (a rare-but-normal pattern), up when it is isolated."""
        flat = patch_maps.reshape(len(patch_maps), -1)
        worst = flat.argmax(axis=1)
        rows = np.arange(len(flat))
        anchors = self.memory_bank[nearest[rows, worst]]
        _, support = self.index.search(anchors, min(self.num_neighbors, len(self.memory_bank)))
        queries = patches[rows, worst]
        d = np.linalg.norm(self.memory_bank[support] - queries[:, None, :], axis=2)
        softmax = np.exp(d - d.max(axis=1, keepdims=True))
        softmax /= softmax.sum(axis=1, keepdims=True)
        return np.asarray((1.0 - softmax[:, 0]) * flat[rows, worst])

    def _image_scores(self, patch_scores: np.ndarray, maps: np.ndarray) -> np.ndarray:
        # Never above the map's peak, so a failing image always has map pixels at or above the threshold.
        return top_mean(maps, self.map_top_fraction) if self.image_score == "map" else patch_scores


class PadimScorer(Scorer, kind="padim"):
    """The network ends in each position's Mahalanobis distance, so the map is its output."""


class FastFlowScorer(Scorer, kind="fastflow"):
    """The network ends in the flows' negated likelihood map, so the map is its output."""


def patch_rows(embedding: np.ndarray) -> np.ndarray:
    """(B, D, h, w) -> (B*h*w, D) rows in image-major, row-major order.

    OpenCV's transpose does it for float32 at a small fraction of numpy's strided copy (docs/benchmarks.md)."""
    b, d, h, w = embedding.shape
    if embedding.dtype != np.float32:
        return np.ascontiguousarray(embedding.transpose(0, 2, 3, 1).reshape(b * h * w, d))
    rows = np.empty((b * h * w, d), dtype=np.float32)
    for i, image in enumerate(embedding):
        cv2.transpose(np.ascontiguousarray(image).reshape(d, h * w), dst=rows[i * h * w : (i + 1) * h * w])
    return rows


def load_scorer(path: str | Path, threads: int | None = None) -> Scorer:
    """Load any saved model for scoring; the manifest says which kind. `threads`: onnxruntime's intra-op threads."""
    path = Path(path)
    manifest, files = read_model_dir(path)
    kind = str(manifest.get("model"))
    if kind not in SCORERS:
        raise ModelDirError(f"{path}: unknown model type {kind!r}; this inspector knows {', '.join(SCORERS)}")
    return SCORERS[kind](manifest, files, threads=threads, source=str(path))
