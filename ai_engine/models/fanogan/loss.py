"""f-AnoGAN losses (Schlegl et al. 2019, Medical Image Analysis 54; not in the seeds).

- GAN phase: WGAN-GP (Gulrajani et al. 2017). Critic:
  ``E[C(G(z))] - E[C(x)] + lambda_gp * E[(||grad C(x_hat)||_2 - 1)^2]``, x_hat on random
  interpolates, lambda_gp = 10. Generator: ``-E[C(G(z))]``.
- Encoder phase ("izi_f", G and C frozen):
  ``L = 1/n ||x - G(E(x))||^2 + kappa / n_d ||f(x) - f(G(E(x)))||^2``, with f the critic's
  last conv feature map, n pixels, n_d features and kappa = 1. The anomaly score is the same
  expression per image: ``A(x) = A_R(x) + kappa * A_D(x)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ai_engine.models.components.dcgan import ConvEncoder


class CriticLoss(nn.Module):
    """WGAN-GP critic loss.

    Args:
        gp_weight: lambda_gp (10 in Gulrajani et al. 2017 and f-AnoGAN).
    """

    def __init__(self, gp_weight: float = 10.0) -> None:
        super().__init__()
        self.gp_weight = gp_weight

    def forward(
        self, critic: ConvEncoder, real: torch.Tensor, fake: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the critic loss (scalar) and the Wasserstein estimate E[C(x)] - E[C(G(z))].

        Args:
            critic: the critic network.
            real: (B, 1, H, W) real images.
            fake: (B, 1, H, W) generated images (detached).
        """
        alpha = torch.rand(len(real), 1, 1, 1, device=real.device)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(mixed).sum(), [mixed], create_graph=True)
        penalty = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
        wasserstein = critic(real).mean() - critic(fake).mean()
        return -wasserstein + self.gp_weight * penalty, wasserstein.detach()


class GeneratorLoss(nn.Module):
    """WGAN generator loss ``-E[C(G(z))]``."""

    def forward(self, fake_scores: torch.Tensor) -> torch.Tensor:
        """Args: critic outputs (B, 1) on generated images. Returns: scalar."""
        return -fake_scores.mean()


class IzifLoss(nn.Module):
    """Per-image izi_f terms: image residual A_R (B,) and critic-feature residual A_D (B,).

    Args:
        kappa: weight of the feature residual (1 in Schlegl et al. 2019).
    """

    def __init__(self, kappa: float = 1.0) -> None:
        super().__init__()
        self.kappa = kappa

    @staticmethod
    def terms(
        x: torch.Tensor, reconstruction: torch.Tensor, f_x: torch.Tensor, f_rec: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared image residual (B,) and mean squared feature residual (B,)."""
        image = ((x - reconstruction) ** 2).flatten(1).mean(1)
        feature = ((f_x - f_rec) ** 2).flatten(1).mean(1)
        return image, feature

    def forward(
        self, x: torch.Tensor, reconstruction: torch.Tensor, f_x: torch.Tensor, f_rec: torch.Tensor
    ) -> torch.Tensor:
        """``A_R + kappa * A_D`` per image (B,)."""
        image, feature = self.terms(x, reconstruction, f_x, f_rec)
        return image + self.kappa * feature
