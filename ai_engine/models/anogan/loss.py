"""AnoGAN losses: DCGAN training (Goodfellow 2014 / Radford 2016) and the latent-search loss.

The latent-search loss is that of Schlegl et al. 2017 (seed 003 section 2.4.1 names its two
terms; the weights are the paper's): for an image x and a latent z,

    L(z) = (1 - lambda) * R(z) + lambda * D(z),   lambda = 0.1,
    R(z) = sum |x - G(z)|                 (residual loss, summed over pixels),
    D(z) = sum |f(x) - f(G(z))|           (discrimination loss, feature matching on the
                                           discriminator's last conv feature map f).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DiscriminatorLoss(nn.Module):
    """Binary cross-entropy: real images -> 1, generated images -> 0."""

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """Args: logits (B, 1) of D on real and on generated images. Returns: scalar."""
        real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return real + fake


class GeneratorLoss(nn.Module):
    """Non-saturating generator loss: -log D(G(z))."""

    def forward(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """Args: logits (B, 1) of D on generated images. Returns: scalar."""
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


class LatentSearchLoss(nn.Module):
    """Per-image AnoGAN loss ``(1 - lambda) * residual + lambda * discrimination``.

    Args:
        lam: the weight lambda of the discrimination loss (0.1 in Schlegl et al. 2017).
    """

    def __init__(self, lam: float = 0.1) -> None:
        super().__init__()
        self.lam = lam

    @staticmethod
    def terms(
        x: torch.Tensor, generated: torch.Tensor, f_x: torch.Tensor, f_generated: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual (B,) and discrimination (B,) losses.

        Args:
            x: (B, 1, H, W) images.
            generated: (B, 1, H, W) G(z).
            f_x: (B, F) discriminator features of x.
            f_generated: (B, F) discriminator features of G(z).
        """
        residual = (x - generated).abs().flatten(1).sum(1)
        discrimination = (f_x - f_generated).abs().flatten(1).sum(1)
        return residual, discrimination

    def forward(
        self, x: torch.Tensor, generated: torch.Tensor, f_x: torch.Tensor, f_generated: torch.Tensor
    ) -> torch.Tensor:
        """The combined loss per image (B,); see `terms` for the arguments."""
        residual, discrimination = self.terms(x, generated, f_x, f_generated)
        return (1.0 - self.lam) * residual + self.lam * discrimination
