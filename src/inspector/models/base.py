"""The one interface every model shares: fit on good images, score a batch into scores and maps, save, load.

Everything that is the same for PatchCore, PaDiM and FastFlow lives here — preprocessing, the frozen backbone,
compiling backbone + model head into one network run by onnxruntime (or torch), batching with background
image decoding, per-stage timings and the model directory format — so a model only says what its head is,
how it learns its state from features, and how it turns features into patch scores. Callers (evaluate,
predict, calibrate, the service) never branch on the model type.
"""

from __future__ import annotations

import inspect
import json
import resource
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from inspector import __version__
from inspector.components.postprocess import smooth_maps
from inspector.data.io import read_image
from inspector.features.backbones import BackboneInfo, load_backbone, make_padding_static
from inspector.features.preprocess import Normalize, Preprocessing, as_size
from inspector.modeldir import ModelDirError, read_manifest, write_model_dir
from inspector.runtime import RUNTIMES, OnnxRunner, TorchRunner, cpu_threads, export_onnx

ImageLike = str | Path | np.ndarray
NETWORK_FILE = "network.onnx"


@dataclass
class ScoreResult:
    """Image scores (B,), anomaly maps (B, H, W) at the network's input size, and per-stage milliseconds."""

    scores: np.ndarray
    maps: np.ndarray
    timings_ms: dict[str, float] = field(default_factory=dict)


class Network(nn.Module):
    """Normalisation, frozen backbone stages and the model's head, as one graph to run or export."""

    def __init__(self, normalize: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> Any:
        return self.head(self.backbone(self.normalize(x)))


class AnomalyModel(ABC):
    """Base estimator. Parameters live in the constructor; fitted state ends in `_`."""

    kind: ClassVar[str]
    state_files: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[int] = (2, 3),
        image_size: int | Sequence[int] = 256,
        crop_size: int | Sequence[int] | None = None,
        weights: str | None = None,
        batch_size: int = 8,
        runtime: str = "auto",
        threads: int | None = None,
        blur_sigma: float = 4.0,
        seed: int = 0,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got '{runtime}'")
        self.backbone = backbone
        self.layers = tuple(int(v) for v in layers)
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
    def _build_head(self) -> nn.Module:
        """The torch module on top of the backbone's stage maps (uses fitted state when there is any)."""

    @abstractmethod
    def _fit(self, images: Sequence[ImageLike], progress: bool) -> dict[str, float]:
        """Learn the model's state from good images; returns extra timings for the fit summary."""

    @abstractmethod
    def _patch_scores(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Network outputs -> (image scores (B,), patch score maps (B, h, w)); higher means more anomalous."""

    @abstractmethod
    def _state(self) -> dict[str, bytes]:
        """Fitted state as files (name -> bytes) for the model directory."""

    @abstractmethod
    def _load_state(self, files: dict[str, bytes]) -> None:
        """Restore fitted state from the files `_state` wrote."""

    def _image_scores(self, patch_scores: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """The image scores to report, given those from `_patch_scores` and the finished maps."""
        return patch_scores

    # ---- estimator API --------------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, as saved in the manifest and accepted back by the constructor."""
        names: list[str] = []
        for cls in type(self).__mro__:
            if "__init__" in cls.__dict__:
                names += [
                    p.name
                    for p in inspect.signature(cls.__init__).parameters.values()
                    if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in names
                ]
        params = {name: getattr(self, name) for name in names}
        return json.loads(json.dumps(params, default=list))  # tuples -> lists, exactly as stored

    def fit(self, images: Sequence[ImageLike], progress: bool = True) -> AnomalyModel:
        """Fit on good images (paths or RGB uint8 arrays, any sizes)."""
        if len(images) == 0:
            raise ValueError("no training images given")
        start = time.perf_counter()
        torch.manual_seed(self.seed)
        self.preprocessing_ = Preprocessing(as_size(self.image_size), as_size(self.crop_size))
        self._backbone_module, self.backbone_info_ = self._load_backbone()
        self.data_info_: dict[str, Any] = {}
        timings = self._fit(images, progress)
        self.fit_info_ = {
            "n_images": len(images),
            "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in timings.items()},
            "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return self

    def score(self, images: Sequence[np.ndarray]) -> ScoreResult:
        """Score decoded RGB uint8 images (any sizes) into image scores and anomaly maps."""
        self._check_fitted()
        t0 = time.perf_counter()
        batch = self.preprocessing_(images)
        t1 = time.perf_counter()
        outputs = self._runner(batch)
        t2 = time.perf_counter()
        scores, patch_maps = self._patch_scores(outputs)
        t3 = time.perf_counter()
        maps = smooth_maps(patch_maps, self.preprocessing_.input_size, self.blur_sigma)
        scores = self._image_scores(scores, maps)
        t4 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "features": t2 - t1, "search": t3 - t2, "postprocess": t4 - t3}
        return ScoreResult(scores.astype(np.float64), maps, {k: v * 1e3 for k, v in timings.items()})

    # ---- shared machinery for subclasses ----------------------------------------------------------------

    def _load_backbone(self) -> tuple[nn.Module, BackboneInfo]:
        module, info = load_backbone(self.backbone, self.layers, self.weights)
        return make_padding_static(module, self.preprocessing_.input_size), info

    def _compile(self) -> None:
        """Join normalisation, backbone and head into the scoring network and pick its runner."""
        info = self.backbone_info_
        network = Network(Normalize(info.mean, info.std), self._backbone_module, self._build_head()).eval()
        self.network_onnx_ = export_onnx(network, self.preprocessing_.input_size, self._n_outputs(network))
        self._runner = self._make_runner(network)

    def _n_outputs(self, network: nn.Module) -> int:
        with torch.inference_mode():
            out = network(torch.zeros(1, 3, *self.preprocessing_.input_size))
        return len(out) if isinstance(out, (list, tuple)) else 1

    def _make_runner(self, network: nn.Module | None) -> OnnxRunner | TorchRunner:
        if self.runtime == "torch":
            if network is None:  # loaded from disk: rebuild the torch graph from the backbone weights
                module, info = self._load_backbone()
                if info.weights_sha256 != self.backbone_info_.weights_sha256:
                    raise ModelDirError(
                        f"backbone weights for '{self.backbone}' ({info.weights_source}) differ from the ones this"
                        " model was fitted with; use runtime 'onnxruntime' or supply the original weights"
                    )
                network = Network(Normalize(info.mean, info.std), module, self._build_head())
            return TorchRunner(network, self.threads)
        return OnnxRunner(self.network_onnx_, self.threads)

    def _batches(self, images: Sequence[ImageLike], progress: bool, desc: str) -> Iterator[np.ndarray]:
        """Preprocessed float32 batches; the next batch is decoded in background threads meanwhile."""
        bar = tqdm(total=len(images), desc=desc, unit="img", disable=not progress, file=sys.stderr)
        starts = range(0, len(images), self.batch_size)
        with ThreadPoolExecutor(max_workers=min(4, cpu_threads(self.threads))) as pool:

            def load(start: int) -> np.ndarray:
                chunk = images[start : start + self.batch_size]
                return self.preprocessing_(list(pool.map(_as_rgb, chunk)))

            with ThreadPoolExecutor(max_workers=1) as prefetch:
                pending = prefetch.submit(load, 0) if len(images) else None
                for start in starts:
                    batch = pending.result()
                    nxt = start + self.batch_size
                    pending = prefetch.submit(load, nxt) if nxt < len(images) else None
                    yield batch
                    bar.update(len(batch))
        bar.close()

    def _check_fitted(self) -> None:
        if not hasattr(self, "_runner"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted: call fit() or load a saved model")

    # ---- persistence ------------------------------------------------------------------------------------

    def save(self, path: str | Path, data: dict[str, Any] | None = None) -> Path:
        """Write the model directory atomically; `data` records what it was fitted on."""
        self._check_fitted()
        manifest = {
            "model": self.kind,
            "inspector_version": __version__,
            "params": self.get_params(),
            "backbone": asdict(self.backbone_info_),
            "preprocessing": {**self.preprocessing_.to_dict(), "input": "RGB uint8 -> float32 NCHW 0..255"},
            "fit": getattr(self, "fit_info_", {}),
            "data": data or {},
        }
        write_model_dir(Path(path), manifest, {NETWORK_FILE: self.network_onnx_, **self._state()})
        self.data_info_ = manifest["data"]
        return Path(path)

    @classmethod
    def _from_manifest(cls, path: Path, manifest: dict[str, Any], **overrides: Any) -> AnomalyModel:
        try:
            model = cls(**{**manifest["params"], **overrides})
            b = manifest["backbone"]
            model.backbone_info_ = BackboneInfo(
                **{**b, **{k: tuple(b[k]) for k in ("out_indices", "channels", "strides", "mean", "std")}}
            )
            pre = manifest["preprocessing"]
            model.preprocessing_ = Preprocessing(as_size(pre["image_size"]), as_size(pre["crop_size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelDirError(f"{path}: manifest is incomplete or from another version ({exc})") from exc
        model.fit_info_ = manifest.get("fit", {})
        model.data_info_ = manifest.get("data", {})
        model.network_onnx_ = (path / NETWORK_FILE).read_bytes()
        model._load_state({name: (path / name).read_bytes() for name in manifest["files"] if name != NETWORK_FILE})
        model._runner = model._make_runner(None)
        return model


def _as_rgb(image: ImageLike) -> np.ndarray:
    return image if isinstance(image, np.ndarray) else read_image(image)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def load_model(path: str | Path, **overrides: Any) -> AnomalyModel:
    """Load any saved model; the manifest says which class. `overrides` set e.g. runtime or threads."""
    from inspector.models import MODELS

    path = Path(path)
    manifest = read_manifest(path)
    kind = manifest.get("model")
    if kind not in MODELS:
        raise ModelDirError(f"{path}: unknown model type {kind!r}; this inspector knows {', '.join(MODELS)}")
    return MODELS[kind]._from_manifest(path, manifest, **overrides)
