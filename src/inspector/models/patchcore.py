"""PatchCore (Roth et al., CVPR 2022): nearest-neighbour distance of each patch to a coreset of good patches.

This is the fitting half: the patch-embedding head and the coreset. Scoring is `PatchCoreScorer`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import skip_init

from inspector.common.errors import ParameterError
from inspector.common.names import ImageScore, IndexKind, choices
from inspector.components.coreset import StreamingCoreset
from inspector.components.knn import NearestNeighbourIndex
from inspector.models.estimator import AnomalyModel, ImageLike
from inspector.models.network import align_stages
from inspector.models.scoring import patch_rows


class PatchEmbedding(nn.Module):
    """Locally aware patch features: 3x3 neighbourhood averaging per stage, stages resized to the finest
    stage's grid and concatenated, optionally projected to `embed_dim` by a fixed random matrix."""

    def __init__(self, channels: Sequence[int], patch_size: int = 3, embed_dim: int | None = None, seed: int = 0):
        super().__init__()
        # Zero padding counts in the average at the border, as in the paper's unfold-and-pool (docs/benchmarks.md
        # measures it against leaving the border out).
        self.pool = nn.AvgPool2d(patch_size, stride=1, padding=patch_size // 2)
        total = sum(channels)
        self.project: nn.Module = nn.Identity()
        if embed_dim is not None and embed_dim < total:
            generator = torch.Generator().manual_seed(seed)
            conv = skip_init(nn.Conv2d, total, embed_dim, 1, bias=False)
            conv.weight.data = torch.randn(embed_dim, total, 1, 1, generator=generator) / embed_dim**0.5
            self.project = conv

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        return self.project(torch.cat(align_stages([self.pool(s) for s in stages]), dim=1))


class PatchCore(AnomalyModel, kind="patchcore"):
    """Memory bank of good patch features; a patch's score is its distance to the nearest bank entry.

    `coreset_ratio` of all training patches are kept, chosen by greedy k-center; while the patches fit in
    `coreset_budget_mb` the paper's single pass runs over all of them, beyond it a streamed two-level pass
    (`coreset_oversample` times the ratio per chunk) keeps memory bounded. `image_score` and `num_neighbors`
    choose the image score (see `PatchCoreScorer`), `index` the FAISS index kind.
    """

    def __init__(
        self,
        *,
        coreset_ratio: float = 0.01,
        coreset_oversample: float = 10.0,
        coreset_budget_mb: float | None = 512.0,
        embed_dim: int | None = None,
        patch_size: int = 3,
        index: IndexKind = "flat",
        image_score: ImageScore = "map",
        num_neighbors: int = 9,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.coreset_ratio = coreset_ratio
        self.coreset_oversample = coreset_oversample
        self.coreset_budget_mb = coreset_budget_mb
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.index = index
        self.image_score = image_score
        self.num_neighbors = num_neighbors

    def _validate_params(self) -> None:
        if self.image_score not in choices(ImageScore):
            raise ParameterError(
                f"image_score must be one of {', '.join(choices(ImageScore))}, got '{self.image_score}'"
            )
        if self.index not in choices(IndexKind):
            raise ParameterError(f"index must be one of {', '.join(choices(IndexKind))}, got '{self.index}'")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ParameterError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.num_neighbors < 1:
            raise ParameterError(f"num_neighbors must be at least 1, got {self.num_neighbors}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ParameterError(f"patch_size must be a positive odd number, got {self.patch_size}")

    def _fit(self, images: Sequence[ImageLike], progress: bool) -> dict[str, Any]:
        self._compile(PatchEmbedding(self.backbone_info_.channels, self.patch_size, self.embed_dim, self.seed))
        coreset = StreamingCoreset(
            self.coreset_ratio,
            self.coreset_oversample,
            seed=self.seed,
            exact_budget_mb=self.coreset_budget_mb,
            threads=self.threads,
        )
        t0 = time.perf_counter()
        for batch in self._batches(images, progress, "features"):
            coreset.add(patch_rows(self._features(batch)[0]))
        t1 = time.perf_counter()
        exact = coreset.exact
        self.memory_bank_ = coreset.finalize(progress)
        t2 = time.perf_counter()
        self.index_ = NearestNeighbourIndex(self.index).build(self.memory_bank_)
        self.n_patches_seen_ = coreset.n_seen
        return {
            "features_seconds": t1 - t0,
            "coreset_seconds": t2 - t1,
            "bank_size": len(self.memory_bank_),
            "patches_seen": coreset.n_seen,
            "coreset_exact": exact,
        }

    def _state(self) -> dict[str, bytes]:
        buffer = io.BytesIO()
        np.savez(buffer, memory_bank=self.memory_bank_, n_patches_seen=np.int64(self.n_patches_seen_))
        return {"memory_bank.npz": buffer.getvalue(), "index.faiss": self.index_.to_bytes()}
