"""GANomaly networks as pure ``nn.Module`` s (DCGAN layout of Akcay et al. 2018).

The encoders and the decoder are `ai_engine.models.components.dcgan.DCEncoder` / `DCDecoder`
(conv 4x4 stride 2 per entry of ``channels``, then a "valid" conv to a 1x1 vector; the mirror).

- `Ganomaly`: generator G = (G_E, G_D), second encoder E, discriminator D (an encoder with one
  output; its last hidden feature map is the feature-matching representation f).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ai_engine.models.components.dcgan import DCDecoder, DCEncoder


class GanomalyOutput(NamedTuple):
    """One generator pass: latent z = G_E(x), reconstruction x̂ = G_D(z), ẑ = E(x̂)."""

    latent: torch.Tensor
    reconstruction: torch.Tensor
    latent_hat: torch.Tensor


class Ganomaly(nn.Module):
    """Generator G_E/G_D, second encoder E and discriminator D of GANomaly.

    ``forward`` is the generator path (what scoring needs); the discriminator is used by the
    trainer only.

    Args:
        image_size: (H, W), divisible by ``2 ** len(channels)``.
        channels: conv channels of every encoder (and, mirrored, of the decoder).
        latent_dim: size of z (the paper's nz, 100).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (32, 64, 128, 256),
        latent_dim: int = 100,
    ) -> None:
        super().__init__()
        self.encoder = DCEncoder(image_size, channels, latent_dim)
        self.decoder = DCDecoder(image_size, channels, latent_dim)
        self.encoder2 = DCEncoder(image_size, channels, latent_dim)
        self.discriminator = DCEncoder(image_size, channels, 1)

    def forward(self, x: torch.Tensor) -> GanomalyOutput:
        """(B, 1, H, W) -> z (B, Z), x̂ (B, 1, H, W), ẑ (B, Z)."""
        latent = self.encoder(x)
        reconstruction = self.decoder(latent)
        return GanomalyOutput(latent, reconstruction, self.encoder2(reconstruction))

    def discriminate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) -> logit (B,) and feature map f(x) of the discriminator."""
        features = self.discriminator.features(x)
        return self.discriminator.head(features).flatten(), features
