"""FastFlow (Yu et al., 2021): 2D normalising flows map good backbone features to a standard normal.

One flow stack per backbone stage is trained on good images by maximum likelihood. A position's anomaly
score comes from its likelihood under the flow, as anomalib computes it: per stage exp(-mean_c z^2 / 2),
resized to the finest stage's grid, averaged over stages and negated (higher = more anomalous; the shared
post-processing then takes the map to input size). The trained flows are part of the exported network,
which returns that combined map, so scoring is one onnxruntime call and a max.

Training features: the frozen backbone runs once and its stage maps are cached in float16 when they fit in
`feature_cache_mb` (about 140 KB per 256 px image for EfficientNet-Lite0 stages 2-3, so ~7000 images per
GiB); larger training sets are re-extracted every epoch instead, which keeps memory bounded at a batch.
Interrupting training (Ctrl-C) after at least one full epoch stops it with a warning and keeps the best
epoch's weights, exactly as early stopping on a loss plateau does.
"""

from __future__ import annotations

import copy
import io
import math
import time
import warnings
from collections.abc import Generator, Sequence
from typing import Any

import torch
from torch import nn

from inspector.common.errors import ParameterError
from inspector.common.progress import progress_bar
from inspector.components.flows import FlowStack
from inspector.models.estimator import AnomalyModel, ImageLike
from inspector.models.network import align_stages

WEIGHT_DECAY = 1e-5  # anomalib's Adam setting for FastFlow
CLAMP = 2.0  # soft clamp of the coupling log-scales, as in the paper's code and anomalib


class LikelihoodMap(nn.Module):
    """Stage features -> (B, 1, h, w) negated mean per-position likelihood on the finest stage's grid."""

    def __init__(self, flows: nn.ModuleList) -> None:
        super().__init__()
        self.flows = flows

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        likelihoods = []
        for flow, features in zip(self.flows, stages, strict=True):
            z, _ = flow(features)
            likelihoods.append(torch.exp(-0.5 * z.square().mean(dim=1, keepdim=True)))
        return -torch.stack(align_stages(likelihoods)).mean(dim=0)


class FastFlow(AnomalyModel, kind="fastflow"):
    """Per-stage normalising flows on frozen features; a patch scores its (negated) likelihood.

    `patience`: stop after this many epochs without a lower training loss. `flow_steps`, `hidden_ratio` and
    `conv3x3_only` shape each stage's flow as in the paper. Flow weights, permutations and the epoch order are
    drawn from generators seeded by `seed`.
    """

    def __init__(
        self,
        *,
        epochs: int = 20,
        lr: float = 1e-3,
        flow_steps: int = 8,
        hidden_ratio: float = 1.0,
        conv3x3_only: bool = False,
        patience: int = 3,
        feature_cache_mb: int = 1024,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.epochs = epochs
        self.lr = lr
        self.flow_steps = flow_steps
        self.hidden_ratio = hidden_ratio
        self.conv3x3_only = conv3x3_only
        self.patience = patience
        self.feature_cache_mb = feature_cache_mb

    def _validate_params(self) -> None:
        for name in ("epochs", "flow_steps", "patience"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr >= 0:
            raise ParameterError(f"lr must be >= 0, got {self.lr}")

    def _new_flows(self, generator: torch.Generator) -> nn.ModuleList:
        return nn.ModuleList(
            FlowStack(c, self.flow_steps, generator, self.hidden_ratio, self.conv3x3_only, CLAMP)
            for c in self.backbone_info_.channels
        )

    def _fit(self, images: Sequence[ImageLike], progress: bool) -> dict[str, Any]:
        self._compile(nn.Identity())  # first the backbone's stage maps, to train the flows on
        t0 = time.perf_counter()
        cache = self._feature_cache(images, progress)
        t1 = time.perf_counter()
        flows = self._new_flows(torch.Generator().manual_seed(self.seed))
        first = self._epoch_batches(images, cache, torch.Generator().manual_seed(self.seed))
        for flow, features in zip(flows, next(first), strict=True):  # one batch sets the standardisation
            assert isinstance(flow, FlowStack)
            flow.standardise(features)
        first.close()
        self.loss_history_ = self._train(flows, images, cache, progress)
        t2 = time.perf_counter()
        self.flows_ = flows.eval().requires_grad_(False)
        self._compile(LikelihoodMap(self.flows_))
        cache_mb = sum(stored.numel() * stored.element_size() for stored in cache or []) / 2**20
        return {
            "features_seconds": t1 - t0,
            "train_seconds": t2 - t1,
            "epochs": len(self.loss_history_),
            "best_loss": min(self.loss_history_),
            "feature_cache_mb": cache_mb,
        }

    def _feature_cache(self, images: Sequence[ImageLike], progress: bool) -> list[torch.Tensor] | None:
        """Every training image's stage maps in float16, or None when they would exceed `feature_cache_mb`."""
        h, w = self.preprocessing_.input_size
        info = self.backbone_info_
        per_image = sum(
            c * math.ceil(h / s) * math.ceil(w / s) for c, s in zip(info.channels, info.strides, strict=True)
        )
        if len(images) * per_image * 2 > self.feature_cache_mb * 2**20:
            return None
        cache: list[torch.Tensor] = []
        start = 0
        for batch in self._batches(images, progress, "features"):
            stages = self._features(batch)
            if not cache:
                cache = [torch.empty((len(images), *s.shape[1:]), dtype=torch.float16) for s in stages]
            for stored, stage in zip(cache, stages, strict=True):
                stored[start : start + len(batch)] = torch.from_numpy(stage)
            start += len(batch)
        return cache

    def _epoch_batches(
        self, images: Sequence[ImageLike], cache: list[torch.Tensor] | None, generator: torch.Generator
    ) -> Generator[list[torch.Tensor], None, None]:
        """One epoch of float32 stage-map batches in a seeded shuffled order, from the cache or the backbone."""
        order = torch.randperm(len(images), generator=generator)
        if cache is not None:
            for rows in order.split(self.batch_size):
                yield [stored[rows].float() for stored in cache]
        else:
            for batch in self._batches([images[i] for i in order.tolist()], False, "features"):
                yield [torch.from_numpy(stage) for stage in self._features(batch)]

    def _train(
        self, flows: nn.ModuleList, images: Sequence[ImageLike], cache: list[torch.Tensor] | None, progress: bool
    ) -> list[float]:
        """Adam on the flows' NLL until `epochs` or a `patience`-epoch plateau; leaves the best epoch's weights."""
        optimizer = torch.optim.Adam(flows.parameters(), lr=self.lr, weight_decay=WEIGHT_DECAY)
        generator = torch.Generator().manual_seed(self.seed)
        history: list[float] = []
        best_loss, best_epoch, best_state = math.inf, 0, {}
        bar = progress_bar(range(self.epochs), desc="fastflow", unit="epoch", disable=not progress)
        try:
            for epoch in bar:
                total = 0.0
                for stages in self._epoch_batches(images, cache, generator):
                    loss = negative_log_likelihood(flows, stages)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += loss.item() * len(stages[0])
                history.append(total / len(images))
                bar.set_postfix(loss=f"{history[-1]:.5g}")
                if history[-1] < best_loss:
                    best_loss, best_epoch, best_state = history[-1], epoch, copy.deepcopy(flows.state_dict())
                elif epoch - best_epoch >= self.patience or not math.isfinite(history[-1]):
                    break
        except KeyboardInterrupt:
            if not history:
                raise
            warnings.warn(
                f"FastFlow training interrupted after {len(history)} epochs; keeping the best weights (epoch"
                f" {best_epoch + 1}, loss {best_loss:.4g})",
                RuntimeWarning,
                stacklevel=4,
            )
        finally:
            bar.close()
        if not best_state:
            raise FloatingPointError(f"FastFlow training diverged (loss {history[0]}); try a lower lr")
        flows.load_state_dict(best_state)
        return history

    def _state(self) -> dict[str, bytes]:
        buffer = io.BytesIO()
        torch.save({"flows": self.flows_.state_dict(), "loss_history": self.loss_history_}, buffer)
        return {"flows.pt": buffer.getvalue()}


def negative_log_likelihood(flows: nn.ModuleList, stages: list[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of the mean per-image NLL 0.5 * ||z||^2 - log|det J| (constants dropped), as anomalib."""
    loss = torch.zeros(())
    for flow, features in zip(flows, stages, strict=True):
        z, log_det = flow(features)
        loss = loss + (0.5 * z.square().sum(dim=(1, 2, 3)) - log_det).mean()
    return loss
