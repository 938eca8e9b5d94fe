"""The five networks of ALAD as one pure ``nn.Module``.

Encoder E and generator G (DCGAN-style, BatchNorm) and three discriminators, all spectrally
normalised (``torch.nn.utils.parametrizations.spectral_norm``) with dropout:

- ``d_xz(x, z)``: is (x, z) a pair (x, E(x)) or (G(z), z)?  (the BiGAN/ALI discriminator)
- ``d_xx(x, x')``: is x' the image x itself or its reconstruction G(E(x))?
- ``d_zz(z, z')``: is z' the latent z itself or its cycle E(G(z))?
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ai_engine.models.components.dcgan import ConvEncoder, ConvGenerator, apply_spectral_norm


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.2)


class JointDiscriminator(nn.Module):
    """D_xz: conv branch for x, dense branch for z, joint dense layers -> logit (B, 1)."""

    def __init__(
        self,
        image_size: Sequence[int],
        channels: Sequence[int],
        latent_dim: int,
        hidden: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.x_branch = ConvEncoder(
            image_size, channels, out_dim=hidden, norm="none", dropout=dropout, spectral=True
        )
        self.z_branch = apply_spectral_norm(
            nn.Sequential(nn.Linear(latent_dim, hidden), _leaky(), nn.Dropout(dropout))
        )
        self.joint = apply_spectral_norm(
            nn.Sequential(nn.Linear(2 * hidden, hidden), _leaky(), nn.Dropout(dropout))
        )
        self.logit = apply_spectral_norm(nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logit (B, 1) of the pair x (B, 1, H, W), z (B, Z)."""
        joint = torch.cat([nn.functional.leaky_relu(self.x_branch(x), 0.2), self.z_branch(z)], 1)
        out: torch.Tensor = self.logit(self.joint(joint))
        return out


class LatentPairDiscriminator(nn.Module):
    """D_zz: dense layers on the concatenated pair (z, z') -> logit (B, 1)."""

    def __init__(self, latent_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.body = apply_spectral_norm(
            nn.Sequential(
                nn.Linear(2 * latent_dim, hidden),
                _leaky(),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),
                _leaky(),
                nn.Dropout(dropout),
            )
        )
        self.logit = apply_spectral_norm(nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor, z_other: torch.Tensor) -> torch.Tensor:
        """z, z_other (B, Z) -> logit (B, 1)."""
        out: torch.Tensor = self.logit(self.body(torch.cat([z, z_other], 1)))
        return out


class ImagePairDiscriminator(nn.Module):
    """D_xx: conv layers on the channel-stacked pair (x, x') -> logit (B, 1).

    ``features`` (the flattened last conv map) is the intermediate layer of ALAD's
    feature-matching anomaly score.
    """

    def __init__(self, image_size: Sequence[int], channels: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.net = ConvEncoder(
            image_size, channels, out_dim=1, in_channels=2, norm="none", dropout=dropout,
            spectral=True,
        )  # fmt: skip

    def features(self, x: torch.Tensor, x_other: torch.Tensor) -> torch.Tensor:
        """x, x_other (B, 1, H, W) -> (B, F)."""
        return self.net.features(torch.cat([x, x_other], 1))

    def forward(self, x: torch.Tensor, x_other: torch.Tensor) -> torch.Tensor:
        """x, x_other (B, 1, H, W) -> logit (B, 1)."""
        out: torch.Tensor = self.net(torch.cat([x, x_other], 1))
        return out


class ALADNetwork(nn.Module):
    """E, G, D_xz, D_xx, D_zz.

    Args:
        image_size: (H, W), both divisible by 16.
        channels: channels of the 4 conv layers of E and of the discriminators' conv branches
            (G mirrors them).
        latent_dim: size of z (prior N(0, I)).
        hidden: width of the discriminators' dense layers.
        dropout: dropout in the discriminators.
        encoder_spectral_norm: also spectrally normalise E (default False).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (32, 64, 128, 256),
        latent_dim: int = 100,
        hidden: int = 256,
        dropout: float = 0.2,
        encoder_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.encoder = ConvEncoder(
            image_size, channels, out_dim=self.latent_dim, norm="batch",
            spectral=encoder_spectral_norm,
        )  # fmt: skip
        self.generator = ConvGenerator(image_size, channels, self.latent_dim)
        self.d_xz = JointDiscriminator(image_size, channels, self.latent_dim, hidden, dropout)
        self.d_xx = ImagePairDiscriminator(image_size, channels, dropout)
        self.d_zz = LatentPairDiscriminator(self.latent_dim, hidden, dropout)

    def discriminators(self) -> list[nn.Module]:
        """D_xz, D_xx, D_zz."""
        return [self.d_xz, self.d_xx, self.d_zz]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> reconstruction G(E(x)) (B, 1, H, W) in [0, 1]."""
        out: torch.Tensor = self.generator(self.encoder(x))
        return out
