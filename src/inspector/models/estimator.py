"""The fitting half's one interface: fit on good images, then score or save. PatchCore, PaDiM and FastFlow
say only what their head is and how they learn their state from features.

scikit-learn's estimator contract, exactly: the constructor stores its parameters unchanged and validates
nothing; `fit` validates them and sets the fitted state, every name of which ends in `_`; `get_params` and
`set_params` round-trip; randomness comes from `seed` through explicit generators, never a global RNG. Thread
counts are process-wide for torch and FAISS, so they are set by the entry point (the CLI), not here.

Scoring is not done here: a fitted estimator builds the same torch-free `Scorer` that `load_scorer` builds from
the saved directory, and `score` calls it, so the model scored in memory is the model on the line.
"""

from __future__ import annotations

import inspect
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from inspector import __version__
from inspector.common.errors import ParameterError
from inspector.common.names import ModelKind, Runtime, choices
from inspector.common.progress import progress_bar
from inspector.common.system import cpu_threads, peak_rss_mb
from inspector.components.drift import REFERENCE_FILE, DriftReference, image_statistics
from inspector.data.io import read_image
from inspector.features.backbones import BackboneInfo, load_backbone, make_padding_static
from inspector.features.preprocess import Preprocessing, as_size
from inspector.models.golden import GOLDEN_FILE, GOLDEN_TRAIN_IMAGES, GoldenRole, GoldenSet, spread
from inspector.models.network import Network, Normalize
from inspector.models.persistence import NETWORK_FILE, write_model_dir
from inspector.models.registry import Registry
from inspector.models.scoring import SCORERS, Runner, Scorer, ScoreResult
from inspector.runtime.export import export_onnx
from inspector.runtime.onnx import OnnxRunner
from inspector.runtime.torch_runner import TorchRunner

ImageLike = str | Path | np.ndarray

ESTIMATORS: Registry[AnomalyModel] = Registry("estimator")


class AnomalyModel(ABC):
    """Base estimator. Parameters live in the constructor; fitted state ends in `_`."""

    kind: ClassVar[ModelKind]

    def __init_subclass__(cls, kind: ModelKind | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.kind = kind
            ESTIMATORS.add(kind, cls)

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (2, 3),
        image_size: int | Sequence[int] = 256,
        crop_size: int | Sequence[int] | None = None,
        weights: str | None = None,
        batch_size: int = 8,
        runtime: Runtime = "onnxruntime",
        threads: int | None = None,
        blur_sigma: float = 4.0,
        seed: int = 0,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.image_size = image_size
        self.crop_size = crop_size
        self.weights = weights
        self.batch_size = batch_size
        self.runtime = runtime
        self.threads = threads
        self.blur_sigma = blur_sigma
        self.seed = seed

    # ---- the parts a model defines -------------------------------------------------------------------

    @abstractmethod
    def _fit(self, images: Sequence[ImageLike], progress: bool) -> dict[str, Any]:
        """Learn the model's state from good images; returns extra timings for the fit summary."""

    @abstractmethod
    def _state(self) -> dict[str, bytes]:
        """Fitted state as files (name -> bytes) for the model directory."""

    @abstractmethod
    def _validate_params(self) -> None:
        """Check the method's own parameters (called by `fit`); raise ParameterError."""

    # ---- estimator API --------------------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" in klass.__dict__ and klass is not object:
                for p in inspect.signature(klass.__init__).parameters.values():  # type: ignore[misc]
                    if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names:
                        names.append(p.name)
        return names

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Constructor parameters as stored: `type(m)(**m.get_params())` builds an equal, unfitted model."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> AnomalyModel:
        """Change parameters (they take effect at the next `fit`); unknown names are an error."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ParameterError(f"{type(self).__name__} has no parameter '{name}' (it has {', '.join(valid)})")
            setattr(self, name, value)
        return self

    def fit(
        self,
        images: Sequence[ImageLike],
        progress: bool = True,
        golden: Sequence[tuple[GoldenRole, ImageLike]] = (),
    ) -> AnomalyModel:
        """Fit on good images (paths or RGB uint8 arrays, any sizes).

        `golden` adds labelled test images (role "good" or "defect") to the golden set, which always holds a
        spread of the training images: the set `inspector export` checks every export against."""
        self._validate()
        if len(images) == 0:
            raise ParameterError("no training images given")
        start = time.perf_counter()
        self.preprocessing_ = Preprocessing(_size(self.image_size, "image_size"), as_size(self.crop_size))
        self._backbone_module, self.backbone_info_ = self._load_backbone()
        timings = self._fit(images, progress)
        self.fit_info_ = {
            "n_images": len(images),
            "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()},
            "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.golden_ = self._golden_set(images, golden)
        self.drift_reference_ = self._drift_reference(images)
        self.scorer_ = SCORERS[self.kind](self._manifest(), self._files(), runner=self._network_runner)
        return self

    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        """Score decoded RGB uint8 images (any sizes) into image scores and anomaly maps."""
        return self._fitted_scorer().score(images)

    def save(self, path: str | Path, data: dict[str, Any] | None = None) -> Path:
        """Write the model directory atomically; `data` records what it was fitted on. The model is unchanged."""
        self._fitted_scorer()
        write_model_dir(Path(path), self._manifest(data), self._files())
        return Path(path)

    # ---- shared machinery for subclasses ----------------------------------------------------------------

    def _validate(self) -> None:
        if self.runtime not in choices(Runtime):
            raise ParameterError(f"runtime must be one of {', '.join(choices(Runtime))}, got '{self.runtime}'")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ParameterError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.layers or not all(isinstance(v, int) for v in self.layers):
            raise ParameterError(f"layers must be backbone stage numbers such as (2, 3), got {self.layers!r}")
        if not self.blur_sigma >= 0:
            raise ParameterError(f"blur_sigma must be >= 0, got {self.blur_sigma!r}")
        image, crop = _size(self.image_size, "image_size"), as_size(self.crop_size)
        if crop is not None and (crop[0] > image[0] or crop[1] > image[1] or min(crop) < 1):
            raise ParameterError(
                f"crop_size {self.crop_size!r} does not fit in image_size {self.image_size!r}: the centre crop is "
                "taken from the resized image, so give a crop_size no larger than image_size (or none)"
            )
        self._validate_params()

    def _fitted_scorer(self) -> Scorer:
        if not hasattr(self, "scorer_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted: call fit() or load_scorer() a saved model")
        return self.scorer_

    def _load_backbone(self) -> tuple[nn.Module, BackboneInfo]:
        module, info = load_backbone(self.backbone, tuple(self.layers), self.weights)
        return make_padding_static(module, self.preprocessing_.input_size), info

    def _compile(self, head: nn.Module) -> None:
        """Join normalisation, backbone and `head` (the module on the backbone's stage maps) into the network, export
        it and pick its runner. Fitting compiles once to extract features and, where the head holds the fitted
        state, once more at the end: the last compile is the network that is saved and scored."""
        info = self.backbone_info_
        network = Network(Normalize(info.mean, info.std), self._backbone_module, head).eval()
        self.network_ = network
        self.network_onnx_ = export_onnx(network, self.preprocessing_.input_size, self._n_outputs(network))
        runner: Runner = (
            TorchRunner(network) if self.runtime == "torch" else OnnxRunner(self.network_onnx_, self.threads)
        )
        self._network_runner = runner

    def _golden_set(self, images: Sequence[ImageLike], extra: Sequence[tuple[GoldenRole, ImageLike]]) -> GoldenSet:
        """A spread of the training images plus `extra`, scored by the network as torch runs it: the reference
        an export must reproduce."""
        chosen: list[tuple[str, ImageLike]] = [("train", images[i]) for i in spread(images, GOLDEN_TRAIN_IMAGES)]
        chosen += [(role, image) for role, image in extra]
        inputs = np.stack([self.preprocessing_.one(_as_rgb(image)) for _, image in chosen])
        reference = SCORERS[self.kind](self._manifest(), self._state(), runner=TorchRunner(self.network_))
        scores, maps = [], []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            result = reference.score_batch(np.ascontiguousarray(chunk.transpose(0, 3, 1, 2), dtype=np.float32))
            scores.append(result.scores)
            maps.append(result.maps.astype(np.float32))
        return GoldenSet(
            names=[_image_name(image, i) for i, (_, image) in enumerate(chosen)],
            roles=[role for role, _ in chosen],
            inputs=inputs,
            scores=np.concatenate(scores),
            maps=np.concatenate(maps),
        )

    def _drift_reference(self, images: Sequence[ImageLike]) -> DriftReference:
        """The image statistics of every training image: the reference the service's drift watch compares the
        line's images with (components.drift). Pass scores are not taken here: the training images' own scores
        are optimistic (the memory bank holds them), so the score reference comes from a calibration's held-out
        good images instead."""
        with ThreadPoolExecutor(max_workers=min(4, cpu_threads(self.threads))) as pool:
            stats = list(pool.map(lambda image: image_statistics(_as_rgb(image)), images))
        values = {name: [s[name] for s in stats] for name in stats[0]}
        return DriftReference.from_values(values, f"fit: {len(images)} training images")

    def _n_outputs(self, network: nn.Module) -> int:
        with torch.inference_mode():
            out = network(torch.zeros(1, 3, *self.preprocessing_.input_size))
        return len(out) if isinstance(out, (list, tuple)) else 1

    def _features(self, batch: np.ndarray) -> list[np.ndarray]:
        """The current network's outputs for one preprocessed batch."""
        return self._network_runner(batch)

    def _batches(self, images: Sequence[ImageLike], progress: bool, desc: str) -> Iterator[np.ndarray]:
        """Preprocessed float32 batches; the next batch is decoded in background threads meanwhile."""
        bar = progress_bar(total=len(images), desc=desc, unit="img", disable=not progress)
        starts = range(0, len(images), self.batch_size)
        with ThreadPoolExecutor(max_workers=min(4, cpu_threads(self.threads))) as pool:

            def load(start: int) -> np.ndarray:
                chunk = images[start : start + self.batch_size]
                return self.preprocessing_(list(pool.map(_as_rgb, chunk)))

            with ThreadPoolExecutor(max_workers=1) as prefetch:
                pending = prefetch.submit(load, 0) if len(images) else None
                for start in starts:
                    assert pending is not None
                    batch = pending.result()
                    nxt = start + self.batch_size
                    pending = prefetch.submit(load, nxt) if nxt < len(images) else None
                    yield batch
                    bar.update(len(batch))
        bar.close()

    # ---- the model directory ------------------------------------------------------------------------------

    def _manifest(self, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "model": self.kind,
            "inspector_version": __version__,
            "params": json.loads(json.dumps(self.get_params(), default=list)),  # tuples as JSON lists
            "backbone": asdict(self.backbone_info_),
            "preprocessing": {**self.preprocessing_.to_dict(), "input": "RGB uint8 -> float32 NCHW 0..255"},
            "fit": self.fit_info_,
            "data": data or {},
        }

    def _files(self) -> dict[str, bytes]:
        return {
            NETWORK_FILE: self.network_onnx_,
            **self._state(),
            GOLDEN_FILE: self.golden_.to_bytes(),
            REFERENCE_FILE: self.drift_reference_.to_bytes(),
        }


def _as_rgb(image: ImageLike) -> np.ndarray:
    return image if isinstance(image, np.ndarray) else read_image(image)


def _image_name(image: ImageLike, position: int) -> str:
    """A golden image's name as its folder and file (test images of different defect types share file names)."""
    if isinstance(image, str | Path):
        return f"{Path(image).parent.name}/{Path(image).name}"
    return f"array-{position}"


def _size(value: int | Sequence[int], name: str) -> tuple[int, int]:
    size = as_size(value)
    if size is None or min(size) < 1:
        raise ParameterError(f"{name} must be a positive size such as 256 or (256, 320), got {value!r}")
    return size
