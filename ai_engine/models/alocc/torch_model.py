"""ALOCC networks as pure ``nn.Module`` s.

- R (`Reconstructor`): fully convolutional encoder-decoder, no pooling (strided convs), BatchNorm
  after each layer, LeakyReLU 0.2 in the encoder and ReLU in the decoder, a 1x1 bottleneck conv
  to ``latent_dim`` channels, sigmoid output in [0, 1].
- D: the DCGAN discriminator `ai_engine.models.components.dcgan.DCEncoder` with one
  output logit (D(X) = sigmoid(logit), the likelihood of the target class).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from ai_engine.models.components.dcgan import LEAKY, DCEncoder, down_convs, up_convs


class Reconstructor(nn.Module):
    """R: (B, 1, H, W) -> (B, 1, H, W) in [0, 1].

    Args:
        image_size: (H, W), each divisible by ``2 ** len(channels)``.
        channels: channels of the strided encoder convs (mirrored by the decoder).
        latent_dim: channels of the 1x1 bottleneck feature map.
    """

    def __init__(self, image_size: Sequence[int], channels: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        factor = 2 ** len(channels)
        if not channels or int(image_size[0]) % factor or int(image_size[1]) % factor:
            raise ValueError(
                f"image_size {list(image_size)} must be divisible by 2**len(channels) = {factor}"
            )
        layers = down_convs(1, channels, "BATCH", norm_first=True, bias=False)
        c_in = int(channels[-1])
        layers.append(Convolution(2, c_in, latent_dim, kernel_size=1, act=LEAKY, norm="BATCH"))
        self.encoder = nn.Sequential(*layers)
        ups = up_convs(latent_dim, [*(int(c) for c in reversed(channels[:-1])), 1])
        self.decoder = nn.Sequential(*ups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct (B, 1, H, W)."""
        return torch.sigmoid(self.decoder(self.encoder(x)))


class Alocc(nn.Module):
    """R and D of ALOCC; ``forward`` is R (reconstruction), `discriminate` gives D's logit.

    Args:
        image_size: (H, W), divisible by ``2 ** len(channels)``.
        channels: conv channels of R's encoder and of D.
        latent_dim: bottleneck channels of R.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (16, 32, 64, 128),
        latent_dim: int = 64,
    ) -> None:
        super().__init__()
        self.reconstructor = Reconstructor(image_size, channels, latent_dim)
        self.discriminator = DCEncoder(image_size, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """R(x): (B, 1, H, W) -> (B, 1, H, W)."""
        out: torch.Tensor = self.reconstructor(x)
        return out

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """D's logit (B,); D(x) = sigmoid(logit) is the target-class likelihood."""
        logit: torch.Tensor = self.discriminator(x)
        return logit.flatten()
