"""The DCGAN of AnoGAN as a pure ``nn.Module``: generator G and discriminator D."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ai_engine.models.components.dcgan import ConvEncoder, ConvGenerator


class DCGAN(nn.Module):
    """Generator ``G: z (B, Z) -> (B, 1, H, W)`` and discriminator ``D: x -> logit (B, 1)``.

    Args:
        image_size: (H, W), both divisible by 16.
        channels: channels of D's 4 conv layers (G mirrors them).
        latent_dim: size of z (prior N(0, I)).
        d_norm: normalisation in D (``batch`` as in DCGAN, ``instance`` or ``none``).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (32, 64, 128, 256),
        latent_dim: int = 100,
        d_norm: str = "batch",
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.generator = ConvGenerator(image_size, channels, self.latent_dim)
        self.discriminator = ConvEncoder(image_size, channels, out_dim=1, norm=d_norm)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> generated images (B, 1, H, W) in [0, 1]."""
        out: torch.Tensor = self.generator(z)
        return out
