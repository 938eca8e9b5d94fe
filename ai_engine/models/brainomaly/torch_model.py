"""Brainomaly's generator as a pure ``nn.Module``: an encoder-decoder that outputs an additive map.

The healthy version of an image is ``clamp(x + tanh(G(x)), 0, 1)``: the network only has to say
what to change, which suits spatially aligned images (the paper's registered brain slices).
The paper works in [-1, 1] and applies ``tanh(x + G(x))``; our inputs are in [0, 1], so the
map is bounded by tanh and the sum is clipped to the input range instead. The 1x1 output
layer starts at zero, so an untrained generator is the identity (a normal image needs no
change), which matters for short CPU budgets.
"""

from __future__ import annotations

import torch
from torch import nn

from ai_engine.models.components.translation import UNetTranslator, zero_head


class AdditiveMapGenerator(UNetTranslator):
    """The shared U-Net body (`translation.UNetTranslator`) with a bounded additive map."""

    def build_heads(self, width: int) -> None:
        """A zero-initialised 1x1 convolution to the map."""
        self.head = nn.Sequential(nn.LeakyReLU(0.2), zero_head(width))

    def additive_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> tanh map in (-1, 1), (B, 1, H, W)."""
        return torch.tanh(self.head(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Healthy version of (B, 1, H, W) images in [0, 1]."""
        return (x + self.additive_map(x)).clamp(0.0, 1.0)
