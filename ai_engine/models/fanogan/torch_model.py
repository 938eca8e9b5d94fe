"""The networks of f-AnoGAN as one pure ``nn.Module``: generator, critic and encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ai_engine.models.components.dcgan import ConvEncoder, ConvGenerator


class FAnoGANNetwork(nn.Module):
    """Generator ``G: z -> x``, WGAN critic ``C: x -> (B, 1)`` and encoder ``E: x -> z``.

    Args:
        image_size: (H, W), both divisible by 16.
        channels: channels of the 4 conv layers of C and E (G mirrors them).
        latent_dim: size of z (prior N(0, I)).
        critic_norm: normalisation in the critic; not ``batch`` (the gradient penalty is
            per sample). Default ``none``.
        encoder_norm: normalisation in the encoder (default ``batch``).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (32, 64, 128, 256),
        latent_dim: int = 128,
        critic_norm: str = "none",
        encoder_norm: str = "batch",
    ) -> None:
        super().__init__()
        if critic_norm == "batch":
            raise ValueError("a WGAN-GP critic cannot use batch normalisation")
        self.latent_dim = int(latent_dim)
        self.generator = ConvGenerator(image_size, channels, self.latent_dim)
        self.critic = ConvEncoder(image_size, channels, out_dim=1, norm=critic_norm)
        self.encoder = ConvEncoder(image_size, channels, out_dim=self.latent_dim, norm=encoder_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> reconstruction G(E(x)) (B, 1, H, W) in [0, 1]."""
        out: torch.Tensor = self.generator(self.encoder(x))
        return out
