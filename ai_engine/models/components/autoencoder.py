"""Autoencoder bodies shared by the reconstruction models (``conv_ae``, ``vae``, ``reversed_ae``).

- `ConvAutoEncoder`: the convolutional autoencoder of seed 001. Encoder: 4 convolutional
  layers with ReLU and max-pooling; a fully connected bottleneck; decoder: 4 transposed
  convolutions mirroring the encoder, sigmoid output in [0, 1].
- `ConvVAE`: the same encoder/decoder with a Gaussian latent (mean and log-variance heads).

The attribute names are part of the shipped checkpoints' state-dict keys (``body.encoder.0``
...); renaming one makes ``default-cxr``, ``default-brain`` and ``ae-cxr`` unloadable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn


class ConvAutoEncoder(nn.Module):
    """Conv autoencoder with a fully connected bottleneck.

    Args:
        image_size: (H, W) of the input; both divisible by 16.
        channels: output channels of the 4 encoder layers (mirrored by the decoder).
        latent_dim: size of the fully connected bottleneck.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (128, 128),
        channels: Sequence[int] = (16, 32, 64, 64),
        latent_dim: int = 128,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"channels must have 4 entries, got {list(channels)}")
        height, width = int(image_size[0]), int(image_size[1])
        if height % 16 or width % 16:
            raise ValueError(f"image_size must be divisible by 16, got {height}x{width}")
        self.feature_shape = (int(channels[-1]), height // 16, width // 16)
        n_features = self.feature_shape[0] * self.feature_shape[1] * self.feature_shape[2]

        encoder: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            encoder += [
                Convolution(2, c_in, c_out, kernel_size=3, act="RELU", norm="BATCH"),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.encoder = nn.Sequential(*encoder)
        self.to_latent = nn.Linear(n_features, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, n_features), nn.ReLU())

        decoder: list[nn.Module] = []
        reversed_out = [*reversed(channels[:-1]), channels[0]]
        c_in = channels[-1]
        for i, c_out in enumerate(reversed_out):
            last = i == len(reversed_out) - 1
            decoder.append(
                Convolution(
                    2,
                    c_in,
                    1 if last else c_out,
                    strides=2,
                    kernel_size=4,
                    padding=1,
                    output_padding=0,
                    is_transposed=True,
                    act=None if last else "RELU",
                    norm=None if last else "BATCH",
                    conv_only=last,
                )
            )
            c_in = c_out
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, latent_dim)."""
        latent: torch.Tensor = self.to_latent(self.encoder(x).flatten(1))
        return latent

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 1, H, W) in [0, 1]."""
        features = self.from_latent(z).view(-1, *self.feature_shape)
        return torch.sigmoid(self.decoder(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct (B, 1, H, W) images."""
        return self.decode(self.encode(x))


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
