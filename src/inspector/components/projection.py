"""A linear projection of patch features fitted on the training patches: PCA, optionally whitened.

PatchCore's search cost is patches x bank entries x feature width, so dropping the feature directions good parts
barely vary in cuts the arithmetic where it is spent. "pca" keeps the `dim` directions of largest variance (L2
distances are kept up to the discarded variance); "whiten" also scales each kept direction to unit variance, so
the L2 search becomes a Mahalanobis distance under the training patches' covariance, as in MH-PatchCore.
docs/benchmarks.md measures both against the full width. The fitted model applies it as the last layer of its
network (a 1x1 convolution), so the line box runs it inside onnxruntime with no extra step or thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ProjectionKind = Literal["pca", "whiten"]
PROJECTION_KINDS: tuple[ProjectionKind, ...] = ("pca", "whiten")

# Whitening divides by the square root of each kept eigenvalue; this fraction of the largest one is added first,
# so a direction with (numerically) no variance cannot blow its rounding noise up into distance.
WHITEN_FLOOR = 1e-6


class PatchStatistics:
    """Running mean and covariance of (n, D) patch rows, in float64 around a fixed shift (the first batch's
    mean), so that a mean large against the spread loses no digits."""

    def __init__(self) -> None:
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def add(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        if self._shift is None:
            self._shift = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
            self._sum = np.zeros(rows.shape[1], dtype=np.float64)
            self._outer = np.zeros((rows.shape[1], rows.shape[1]), dtype=np.float64)
        assert self._sum is not None and self._outer is not None
        centred = rows - self._shift
        self._sum += centred.sum(axis=0, dtype=np.float64)
        self._outer += (centred.T @ centred).astype(np.float64)
        self.count += len(rows)

    @property
    def mean(self) -> np.ndarray:
        if self._shift is None or self._sum is None:
            raise ValueError("no patches were added")
        return self._shift + self._sum / self.count

    @property
    def covariance(self) -> np.ndarray:
        """The maximum-likelihood covariance (divided by n)."""
        if self._sum is None or self._outer is None:
            raise ValueError("no patches were added")
        centre = self._sum / self.count
        return self._outer / self.count - np.outer(centre, centre)


@dataclass(frozen=True)
class Projection:
    """rows -> rows @ matrix + bias, with bias = -mean @ matrix: the centred projection in the form a 1x1
    convolution computes, so the bank and the network's output are projected by the same arithmetic."""

    matrix: np.ndarray  # (D, dim) float32
    bias: np.ndarray  # (dim,) float32

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows @ self.matrix + self.bias, dtype=np.float32)


def fit_projection(statistics: PatchStatistics, kind: ProjectionKind, dim: int | None = None) -> Projection:
    """The projection onto the `dim` (default: all) directions of largest variance, whitened for "whiten".

    The sign of each direction is fixed (largest entry positive), so the same patches give the same matrix."""
    if kind not in PROJECTION_KINDS:
        raise ValueError(f"unknown projection '{kind}', choose from {', '.join(PROJECTION_KINDS)}")
    width = len(statistics.mean)
    dim = width if dim is None else dim
    if not 1 <= dim <= width:
        raise ValueError(f"projection dim must be between 1 and the feature width {width}, got {dim}")
    eigenvalues, eigenvectors = np.linalg.eigh(statistics.covariance)
    order = np.argsort(eigenvalues)[::-1][:dim]
    values, vectors = np.maximum(eigenvalues[order], 0.0), eigenvectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(dim)])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    if kind == "whiten":
        vectors = vectors / np.sqrt(values + WHITEN_FLOOR * max(float(values[0]), np.finfo(np.float64).tiny))
    matrix = vectors.astype(np.float32)
    return Projection(matrix, (-statistics.mean @ vectors).astype(np.float32))
