"""PatchCore (Roth et al., CVPR 2022): nearest-neighbour distance of each patch to a coreset of good patches.

This is the fitting half: the patch-embedding head and the coreset. Scoring is `PatchCoreScorer`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import skip_init

from inspector.common.errors import ParameterError
from inspector.common.names import CoresetFallback, CoresetPrecision, ImageScore, IndexKind, choices
from inspector.components.coreset import StreamingCoreset
from inspector.components.knn import NearestNeighbourIndex, relative_spacing
from inspector.components.projection import (
    PROJECTION_KINDS,
    PatchStatistics,
    Projection,
    ProjectionKind,
    fit_projection,
)
from inspector.models.estimator import AnomalyModel, ImageLike
from inspector.models.network import align_stages
from inspector.models.scoring import patch_rows


class PatchEmbedding(nn.Module):
    """Locally aware patch features: 3x3 neighbourhood averaging per stage, stages resized to the finest
    stage's grid and concatenated, optionally projected to `embed_dim` by a fixed random matrix, then by a fitted
    `projection` (PCA or whitening)."""

    def __init__(
        self,
        channels: Sequence[int],
        patch_size: int = 3,
        embed_dim: int | None = None,
        seed: int = 0,
        projection: Projection | None = None,
    ):
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
        self.reduce: nn.Module = nn.Identity()
        if projection is not None:
            fitted = skip_init(nn.Conv2d, projection.matrix.shape[0], projection.dim, 1)
            fitted.weight.data = torch.from_numpy(np.ascontiguousarray(projection.matrix.T))[:, :, None, None]
            fitted.bias.data = torch.from_numpy(projection.bias.copy())
            self.reduce = fitted

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        return self.reduce(self.project(torch.cat(align_stages([self.pool(s) for s in stages]), dim=1)))


class PatchCore(AnomalyModel, kind="patchcore"):
    """Memory bank of good patch features; a patch's score is its distance to the nearest bank entry.

    `coreset_ratio` of all training patches are kept, chosen by greedy k-center; while the patches fit in
    `coreset_budget_mb` the paper's single pass runs over all of them in memory. Beyond it `coreset_fallback`
    decides: "spill" writes them to a temporary file in `coreset_spill_dir` (default: TMPDIR) and runs the same
    pass over its mapping, for the same bank; "stream" reduces them chunk by chunk (`coreset_oversample` times the
    ratio per chunk), which bounds disk as well as memory and gives a worse bank. The patches are held in
    `coreset_precision`: float16 (the default) takes half the memory of float32, so twice as many fit the budget,
    and rounds the bank to float16 values, which an HNSW graph then holds in float16 as well (half the bytes per
    search step, nothing lost); docs/benchmarks.md measures both on three data sets.
    A patch's distance is divided by its nearest entry's spacing in the bank, the mean distance to its
    `density_neighbors` nearest entries relative to the bank's mean (`None`: the bare distance), so a rare-but-normal
    pattern weighs less than a small deviation from a common one. The map is smoothed with `blur_sigma` 5 (the
    other models: 4), which keeps the divided map's pixel AUROC at the bare one's. `image_score` and
    `num_neighbors` choose the image score (see `PatchCoreScorer`; by default the mean of the map's highest
    `map_top_fraction` of pixels); docs/benchmarks.md measures each against anomalib on three data sets. `index` is
    the FAISS index kind: HNSW keeping `ef_search` = 8 candidates by default, the one setting measured to halve the
    search at the exact search's accuracy on all three
    data sets of docs/benchmarks.md (`index="flat"` is exact). `projection` ("pca" or "whiten",
    `inspector.components.projection`) maps patch features onto their `projection_dim` directions of largest
    variance over all training patches before the search, cutting its arithmetic (docs/benchmarks.md measures
    the trade-off); the bank is picked at full width, then projected, and the network ends in the projection.
    `nprobe` is how many IVF lists a search visits (`index="ivf"`), `ef_search` how many candidates an HNSW search
    keeps and `hnsw_m` how many neighbours each entry links to in its graph (`index="hnsw"`): fewer is less work and
    a less exact nearest neighbour.
    """

    def __init__(
        self,
        *,
        coreset_ratio: float = 0.01,
        coreset_oversample: float = 10.0,
        coreset_budget_mb: float | None = 512.0,
        coreset_fallback: CoresetFallback = "spill",
        coreset_spill_dir: str | None = None,
        coreset_precision: CoresetPrecision = "float16",
        embed_dim: int | None = None,
        patch_size: int = 3,
        index: IndexKind = "hnsw",
        image_score: ImageScore = "map",
        map_top_fraction: float = 0.01,
        num_neighbors: int = 9,
        density_neighbors: int | None = 3,
        projection: ProjectionKind | None = None,
        projection_dim: int | None = None,
        nprobe: int = 8,
        ef_search: int = 8,
        hnsw_m: int = 32,
        blur_sigma: float = 5.0,
        **common: Any,
    ) -> None:
        super().__init__(blur_sigma=blur_sigma, **common)
        self.coreset_ratio = coreset_ratio
        self.coreset_oversample = coreset_oversample
        self.coreset_budget_mb = coreset_budget_mb
        self.coreset_fallback = coreset_fallback
        self.coreset_spill_dir = coreset_spill_dir
        self.coreset_precision = coreset_precision
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.index = index
        self.image_score = image_score
        self.map_top_fraction = map_top_fraction
        self.num_neighbors = num_neighbors
        self.density_neighbors = density_neighbors
        self.projection = projection
        self.projection_dim = projection_dim
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.hnsw_m = hnsw_m

    def _validate_params(self) -> None:
        if self.image_score not in choices(ImageScore):
            raise ParameterError(
                f"image_score must be one of {', '.join(choices(ImageScore))}, got '{self.image_score}'"
            )
        if self.index not in choices(IndexKind):
            raise ParameterError(f"index must be one of {', '.join(choices(IndexKind))}, got '{self.index}'")
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ParameterError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.coreset_precision not in choices(CoresetPrecision):
            raise ParameterError(
                f"coreset_precision must be one of {', '.join(choices(CoresetPrecision))}, "
                f"got {self.coreset_precision!r}"
            )
        if self.coreset_fallback not in choices(CoresetFallback):
            raise ParameterError(
                f"coreset_fallback must be one of {', '.join(choices(CoresetFallback))}, got {self.coreset_fallback!r}"
            )
        if self.coreset_spill_dir is not None and not Path(self.coreset_spill_dir).is_dir():
            raise ParameterError(f"coreset_spill_dir {self.coreset_spill_dir!r} is not a directory")
        if self.num_neighbors < 1:
            raise ParameterError(f"num_neighbors must be at least 1, got {self.num_neighbors}")
        neighbors = self.density_neighbors
        if neighbors is not None and (not isinstance(neighbors, int) or neighbors < 1):
            raise ParameterError(f"density_neighbors must be a positive integer or None, got {neighbors!r}")
        if not 0.0 <= self.map_top_fraction < 1.0:
            raise ParameterError(f"map_top_fraction must be in [0, 1), got {self.map_top_fraction}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ParameterError(f"patch_size must be a positive odd number, got {self.patch_size}")
        for name in ("nprobe", "ef_search", "hnsw_m"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name} must be a positive integer, got {value!r}")
        if self.projection is not None and self.projection not in PROJECTION_KINDS:
            raise ParameterError(
                f"projection must be one of {', '.join(PROJECTION_KINDS)} or None, got {self.projection!r}"
            )
        if self.projection_dim is not None:
            if self.projection is None:
                raise ParameterError("projection_dim needs a projection: set projection='pca' or 'whiten' too")
            if not isinstance(self.projection_dim, int) or self.projection_dim < 1:
                raise ParameterError(f"projection_dim must be a positive integer, got {self.projection_dim!r}")

    def _feature_width(self) -> int:
        total = sum(self.backbone_info_.channels)
        return self.embed_dim if self.embed_dim is not None and self.embed_dim < total else total

    def _fit(self, images: Sequence[ImageLike], progress: bool) -> dict[str, Any]:
        if self.projection_dim is not None and self.projection_dim > self._feature_width():
            raise ParameterError(
                f"projection_dim {self.projection_dim} exceeds the patch features' width {self._feature_width()}"
            )
        self._compile(PatchEmbedding(self.backbone_info_.channels, self.patch_size, self.embed_dim, self.seed))
        coreset = StreamingCoreset(
            self.coreset_ratio,
            self.coreset_oversample,
            seed=self.seed,
            exact_budget_mb=self.coreset_budget_mb,
            threads=self.threads,
            dtype=np.dtype(self.coreset_precision),
            fallback=self.coreset_fallback,
            spill_dir=self.coreset_spill_dir,
        )
        statistics = PatchStatistics() if self.projection is not None else None
        t0 = time.perf_counter()
        for batch in self._batches(images, progress, "features"):
            rows = patch_rows(self._features(batch)[0])
            if coreset.expected_rows is None:  # every image gives as many patches as the first
                coreset.expect(len(rows) // len(batch) * len(images))
            if statistics is not None:
                statistics.add(rows)
            coreset.add(rows)
        t1 = time.perf_counter()
        exact, spilled = coreset.exact, coreset.spilled
        bank = coreset.finalize(progress)
        t2 = time.perf_counter()
        self.projection_: Projection | None = None
        if statistics is not None and self.projection is not None:
            self.projection_ = fit_projection(statistics, self.projection, self.projection_dim)
            bank = self.projection_(bank)
            channels, embed_dim = self.backbone_info_.channels, self.embed_dim
            self._compile(PatchEmbedding(channels, self.patch_size, embed_dim, self.seed, self.projection_))
        self.memory_bank_ = bank
        self.bank_spacing_: np.ndarray | None = None
        if self.density_neighbors is not None:
            self.bank_spacing_ = relative_spacing(bank, self.density_neighbors)
        index = NearestNeighbourIndex(self.index, nprobe=self.nprobe, hnsw_m=self.hnsw_m, ef_search=self.ef_search)
        self.index_ = index.build(self.memory_bank_)
        self.n_patches_seen_ = coreset.n_seen
        return {
            "features_seconds": t1 - t0,
            "coreset_seconds": t2 - t1,
            "bank_size": len(self.memory_bank_),
            "patches_seen": coreset.n_seen,
            "coreset_exact": exact,
            "coreset_spilled": spilled,
        }

    def _state(self) -> dict[str, bytes]:
        buffer = io.BytesIO()
        arrays: dict[str, np.ndarray] = {
            "memory_bank": self.memory_bank_,
            "n_patches_seen": np.array(self.n_patches_seen_, np.int64),
        }
        if self.bank_spacing_ is not None:
            arrays["spacing"] = self.bank_spacing_
        np.savez(buffer, allow_pickle=False, **arrays)
        return {"memory_bank.npz": buffer.getvalue(), "index.faiss": self.index_.to_bytes()}
