"""Convolutional VAE: the conv AE's encoder/decoder with a Gaussian latent."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ai_engine.models.conv_ae.torch_model import ConvAutoEncoder


class ConvVAE(nn.Module):
    """VAE with the `ConvAutoEncoder` layout; ``forward`` returns the mean reconstruction.

    Args:
        image_size: (H, W), divisible by 16.
        channels: encoder channels (4 entries).
        latent_dim: size of the Gaussian latent.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (128, 128),
        channels: Sequence[int] = (16, 32, 64, 64),
        latent_dim: int = 128,
    ) -> None:
        super().__init__()
        self.body = ConvAutoEncoder(image_size, channels, latent_dim)
        n_features = self.body.to_latent.in_features
        self.to_logvar = nn.Linear(n_features, latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) -> mean and log-variance, each (B, latent_dim)."""
        features = self.body.encoder(x).flatten(1)
        return self.body.to_latent(features), self.to_logvar(features).clamp(-10, 10)

    def sample_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised pass for training: (reconstruction, mu, logvar)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.body.decode(z), mu, logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction from the latent mean (inference)."""
        mu, _ = self.encode(x)
        return self.body.decode(mu)
