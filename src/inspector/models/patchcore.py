"""PatchCore (Roth et al., CVPR 2022): nearest-neighbour distance of each patch to a coreset of good patches."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inspector.components.coreset import StreamingCoreset
from inspector.index import NearestNeighbourIndex
from inspector.models.base import AnomalyModel, ImageLike


class PatchEmbedding(nn.Module):
    """Locally aware patch features: 3x3 neighbourhood averaging per stage, stages resized to the finest
    stage's grid and concatenated, optionally projected to `embed_dim` by a fixed random matrix."""

    def __init__(self, channels: Sequence[int], patch_size: int = 3, embed_dim: int | None = None,
                 seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        # Zero padding counts in the average at the border, as in the paper's unfold-and-pool (measured: image AUROC
        # 0.913 vs 0.865 without it on magnetic_tile, docs/benchmarks.md).
        self.pool = nn.AvgPool2d(patch_size, stride=1, padding=patch_size // 2)
        total = sum(channels)
        self.project: nn.Module = nn.Identity()
        if embed_dim is not None and embed_dim < total:
            generator = torch.Generator().manual_seed(seed)
            conv = nn.Conv2d(total, embed_dim, 1, bias=False)
            conv.weight.data = torch.randn(embed_dim, total, 1, 1, generator=generator) / embed_dim**0.5
            self.project = conv

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        size = stages[0].shape[-2:]
        maps = [self.pool(s) for s in stages]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return self.project(torch.cat(maps, dim=1))


IMAGE_SCORES = ("map", "patch", "reweighted")


class PatchCore(AnomalyModel):
    """Memory bank of good patch features; a patch's score is its distance to the nearest bank entry.

    The image score is, by default, the peak of the finished (upsampled, smoothed) anomaly map: the verdict then
    rests on the peak of the very heatmap the operator sees, and a lone noisy patch counts less than a defect
    covering a few. `image_score="patch"` takes the raw maximum patch distance (the paper's score),
    `"reweighted"` the paper's re-weighted one; docs/benchmarks.md compares the three on two datasets.
    """

    kind = "patchcore"

    def __init__(
        self,
        *,
        coreset_ratio: float = 0.01,
        coreset_oversample: float = 10.0,
        coreset_budget_mb: float | None = 512.0,
        embed_dim: int | None = None,
        patch_size: int = 3,
        index: str = "flat",
        image_score: str = "map",
        num_neighbors: int = 9,
        **common,
    ) -> None:
        super().__init__(**common)
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got '{image_score}'")
        self.coreset_ratio = coreset_ratio
        self.coreset_oversample = coreset_oversample
        self.coreset_budget_mb = coreset_budget_mb
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.index = index
        self.image_score = image_score
        self.num_neighbors = num_neighbors

    def _build_head(self) -> nn.Module:
        return PatchEmbedding(self.backbone_info_.channels, self.patch_size, self.embed_dim, self.seed)

    def _fit(self, images: Sequence[ImageLike], progress: bool) -> dict[str, float]:
        self._compile()
        coreset = StreamingCoreset(self.coreset_ratio, self.coreset_oversample, seed=self.seed,
                                   exact_budget_mb=self.coreset_budget_mb)  # fmt: skip
        t0 = time.perf_counter()
        for batch in self._batches(images, progress, "features"):
            coreset.add(_patches(self._runner(batch)[0]))
        t1 = time.perf_counter()
        exact = coreset.exact
        self.memory_bank_ = coreset.finalize(progress)
        t2 = time.perf_counter()
        self.index_ = NearestNeighbourIndex(self.index, threads=self.threads).build(self.memory_bank_)
        self.n_patches_seen_ = coreset.n_seen
        return {"features_seconds": t1 - t0, "coreset_seconds": t2 - t1, "bank_size": len(self.memory_bank_),
                "patches_seen": coreset.n_seen, "coreset_exact": exact}  # fmt: skip

    def _patch_scores(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        embedding = outputs[0]
        b, _, h, w = embedding.shape
        patches = _patches(embedding)
        distances, nearest = self.index_.search(patches, 1)
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
        anchors = self.memory_bank_[nearest[rows, worst]]
        _, support = self.index_.search(anchors, min(self.num_neighbors, len(self.memory_bank_)))
        queries = patches[rows, worst]
        d = np.linalg.norm(self.memory_bank_[support] - queries[:, None, :], axis=2)
        softmax = np.exp(d - d.max(axis=1, keepdims=True))
        softmax /= softmax.sum(axis=1, keepdims=True)
        return (1.0 - softmax[:, 0]) * flat[rows, worst]

    def _image_scores(self, patch_scores: np.ndarray, maps: np.ndarray) -> np.ndarray:
        return maps.reshape(len(maps), -1).max(axis=1) if self.image_score == "map" else patch_scores

    def _state(self) -> dict[str, bytes]:
        buffer = io.BytesIO()
        np.savez(buffer, memory_bank=self.memory_bank_, n_patches_seen=np.int64(self.n_patches_seen_))
        return {"memory_bank.npz": buffer.getvalue(), "index.faiss": self.index_.to_bytes()}

    def _load_state(self, files: dict[str, bytes]) -> None:
        with np.load(io.BytesIO(files["memory_bank.npz"])) as state:
            self.memory_bank_ = state["memory_bank"]
            self.n_patches_seen_ = int(state["n_patches_seen"])
        self.index_ = NearestNeighbourIndex(self.index, threads=self.threads).from_bytes(files["index.faiss"])


def _patches(embedding: np.ndarray) -> np.ndarray:
    """(B, D, h, w) -> (B*h*w, D) rows in image-major, row-major order."""
    b, d, h, w = embedding.shape
    return np.ascontiguousarray(embedding.transpose(0, 2, 3, 1).reshape(b * h * w, d))
