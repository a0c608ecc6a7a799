"""2D normalising flows for FastFlow: stacks of affine coupling blocks in the style of FrEIA's AllInOneBlock.

Written here rather than imported from FrEIA because FastFlow needs one narrow slice of it (hard permutation,
soft-clamped affine coupling, learned global affine, forward direction only) and this is ~60 readable lines
that trace to a plain ONNX graph (Slice, Conv, Tanh, Exp, Gather), with no extra dependency on the line box.
The arithmetic matches AllInOneBlock(affine_clamping=clamp, permute_soft=False, global_affine_type="SOFTPLUS")
as anomalib's FastFlow configures it (checked against FrEIA 0.2); a frozen per-channel standardisation
in front replaces anomalib's LayerNorm. There is no inverse because nothing samples from the flow.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init


def seeded_conv(
    in_channels: int, out_channels: int, kernel_size: int, generator: torch.Generator, padding: int = 0
) -> nn.Conv2d:
    """A Conv2d with torch's default initialisation drawn from `generator` instead of the global RNG."""
    conv = skip_init(nn.Conv2d, in_channels, out_channels, kernel_size, padding=padding)
    nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
    nn.init.uniform_(conv.bias, -bound, bound, generator=generator)
    return conv


class CouplingBlock(nn.Module):
    """x -> permute(global_affine([x1, x2 * exp(s(x1)) + t(x1)])), with log|det J| per sample."""

    permutation: torch.Tensor

    def __init__(
        self, channels: int, kernel_size: int, hidden_ratio: float, generator: torch.Generator, clamp: float = 2.0
    ) -> None:
        super().__init__()
        self.passive = channels - channels // 2
        self.active = channels // 2
        hidden = max(1, int(self.passive * hidden_ratio))
        self.subnet = nn.Sequential(
            seeded_conv(self.passive, hidden, kernel_size, generator, padding=kernel_size // 2),
            nn.ReLU(),
            seeded_conv(hidden, 2 * self.active, kernel_size, generator, padding=kernel_size // 2),
        )
        self.clamp = clamp
        # Pre-activation of the global scale: 0.1 * softplus(v, beta=0.5) == 1 at start, as in FrEIA.
        self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), 2.0 * math.log(math.exp(5.0) - 1.0)))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("permutation", torch.randperm(channels, generator=generator))  # fixed

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.passive], x[:, self.passive :]
        a = 0.1 * self.subnet(x1)  # FrEIA's down-scaling keeps a freshly initialised block near identity
        log_scale = self.clamp * torch.tanh(a[:, : self.active])
        x2 = x2 * torch.exp(log_scale) + a[:, self.active :]
        scale = 0.1 * F.softplus(self.global_scale, beta=0.5)
        out = (torch.cat([x1, x2], dim=1) * scale + self.global_offset)[:, self.permutation]
        log_det = log_scale.sum(dim=(1, 2, 3)) + x.shape[2] * x.shape[3] * torch.log(scale).sum()
        return out, log_det


class FlowStack(nn.Module):
    """FastFlow's per-stage flow: a fixed input standardisation, then `steps` coupling blocks whose subnets
    alternate 3x3 and 1x1 convolutions."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        channels: int,
        steps: int,
        generator: torch.Generator,
        hidden_ratio: float = 1.0,
        conv3x3_only: bool = False,
        clamp: float = 2.0,
    ) -> None:
        super().__init__()
        # Backbone features have per-channel std ~6 while the flow's target is N(0, I); anomalib bridges that
        # with a trainable LayerNorm (which the NLL does not account for), here a frozen per-channel affine
        # map set from data, whose constant log-det is counted.
        self.register_buffer("shift", torch.zeros(1, channels, 1, 1))
        self.register_buffer("scale", torch.ones(1, channels, 1, 1))
        self.blocks = nn.ModuleList(
            CouplingBlock(channels, 1 if i % 2 == 1 and not conv3x3_only else 3, hidden_ratio, generator, clamp)
            for i in range(steps)
        )

    @torch.no_grad()
    def standardise(self, features: torch.Tensor) -> None:
        """Set the input standardisation to the per-channel mean and std of `features` (ActNorm's data init)."""
        std, mean = torch.std_mean(features, dim=(0, 2, 3), keepdim=True)
        self.shift.copy_(mean)
        self.scale.copy_(1.0 / std.clamp(min=1e-2 * float(std.max())))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, C, h, w) -> latent z of the same shape and log|det dz/dx| (B,)."""
        log_det = (x.shape[2] * x.shape[3] * torch.log(self.scale).sum()).expand(len(x))
        x = (x - self.shift) * self.scale
        for block in self.blocks:
            x, block_log_det = block(x)
            log_det = log_det + block_log_det
        return x, log_det
