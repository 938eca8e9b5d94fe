"""Brainomaly's generator as a pure ``nn.Module``: an encoder-decoder that outputs an additive map.

The healthy version of an image is ``clamp(x + tanh(G(x)), 0, 1)``: the network only has to say
what to change, which suits spatially aligned images (the paper's registered brain slices).
The paper works in [-1, 1] and applies ``tanh(x + G(x))``; our inputs are in [0, 1], so the
map is bounded by tanh and the sum is clipped to the input range instead. The 1x1 output
layer starts at zero, so an untrained generator is the identity (a normal image needs no
change), which matters for short CPU budgets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ai_engine.models.components.translation import unet_body, zero_head


class AdditiveMapGenerator(nn.Module):
    """Encoder-decoder (`components.translation.unet_body`) producing a bounded additive map.

    Args:
        image_size: (H, W); both divisible by 16 (four stride-2 levels).
        channels: channels of the four encoder levels.
        latent_dim: channels of the bottleneck level.
        num_res_units: residual units per level.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (16, 32, 64, 128),
        latent_dim: int = 128,
        num_res_units: int = 1,
    ) -> None:
        super().__init__()
        self.body = unet_body(image_size, channels, latent_dim, num_res_units)
        self.head = nn.Sequential(nn.LeakyReLU(0.2), zero_head(int(channels[0])))

    def additive_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> tanh map in (-1, 1), (B, 1, H, W)."""
        return torch.tanh(self.head(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Healthy version of (B, 1, H, W) images in [0, 1]."""
        return (x + self.additive_map(x)).clamp(0.0, 1.0)
