"""GANomaly networks as pure ``nn.Module`` s (DCGAN layout of Akcay et al. 2018).

- `DCEncoder`: conv 4x4 stride 2 per entry of ``channels`` (BatchNorm except the first,
  LeakyReLU 0.2), then a "valid" conv over the remaining (H/2^n, W/2^n) grid to a 1x1 vector.
- `DCDecoder`: the mirror (transposed convs, BatchNorm + ReLU), sigmoid output in [0, 1].
- `Ganomaly`: generator G = (G_E, G_D), second encoder E, discriminator D (an encoder with one
  output; its last hidden feature map is the feature-matching representation f).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.networks.blocks import Convolution
from torch import nn

LEAKY = ("LEAKYRELU", {"negative_slope": 0.2})


def _check(image_size: Sequence[int], channels: Sequence[int]) -> tuple[int, int]:
    height, width = int(image_size[0]), int(image_size[1])
    factor = 2 ** len(channels)
    if not channels or height % factor or width % factor:
        raise ValueError(
            f"image_size {height}x{width} must be divisible by 2**len(channels) = {factor}"
        )
    return height // factor, width // factor


class DCEncoder(nn.Module):
    """(B, 1, H, W) -> (B, out_dim); ``features`` gives the last hidden map.

    Args:
        image_size: (H, W), each divisible by ``2 ** len(channels)``.
        channels: output channels of the strided conv layers.
        out_dim: size of the output vector.
    """

    def __init__(self, image_size: Sequence[int], channels: Sequence[int], out_dim: int) -> None:
        super().__init__()
        grid = _check(image_size, channels)
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(channels):
            layers.append(
                Convolution(
                    2,
                    c_in,
                    int(c_out),
                    strides=2,
                    kernel_size=4,
                    padding=1,
                    act=LEAKY,
                    norm=None if i == 0 else "BATCH",
                    bias=False,
                )
            )
            c_in = int(c_out)
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, out_dim, kernel_size=grid, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> last hidden feature map (B, C, H/2^n, W/2^n)."""
        out: torch.Tensor = self.body(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, out_dim)."""
        out: torch.Tensor = self.head(self.features(x))
        return out.flatten(1)


class DCDecoder(nn.Module):
    """(B, latent_dim) -> (B, 1, H, W) in [0, 1], mirroring `DCEncoder`."""

    def __init__(self, image_size: Sequence[int], channels: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        grid = _check(image_size, channels)
        reversed_channels = [int(c) for c in reversed(channels)]
        self.stem = Convolution(
            2,
            latent_dim,
            reversed_channels[0],
            kernel_size=grid,
            strides=grid,
            padding=0,
            output_padding=0,
            is_transposed=True,
            act="RELU",
            norm="BATCH",
            bias=False,
        )
        layers: list[nn.Module] = []
        outs = [*reversed_channels[1:], 1]
        for i, (c_in, c_out) in enumerate(zip(reversed_channels, outs, strict=True)):
            last = i == len(outs) - 1
            layers.append(
                Convolution(
                    2,
                    c_in,
                    c_out,
                    strides=2,
                    kernel_size=4,
                    padding=1,
                    output_padding=0,
                    is_transposed=True,
                    act=None if last else "RELU",
                    norm=None if last else "BATCH",
                    conv_only=last,
                    bias=last,
                )
            )
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 1, H, W)."""
        return torch.sigmoid(self.body(self.stem(z[:, :, None, None])))


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
