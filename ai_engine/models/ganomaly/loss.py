"""GANomaly losses (Akcay et al. 2018, eq. 2.2-2.5 of seed 003).

Generator: ``w_adv * L_adv + w_con * L_con + w_enc * L_enc`` with
- L_adv: feature matching, squared L2 between the discriminator features of x and x̂
  (mean over elements, as in the authors' code ``l2_loss``),
- L_con: L1 between x and x̂ (mean over pixels),
- L_enc: squared L2 between z and ẑ (mean over elements).
Discriminator: binary cross-entropy, x real (1) and x̂ fake (0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeneratorLoss(nn.Module):
    """Weighted GANomaly generator objective; returns (total, terms).

    Args:
        w_adv: weight of the feature-matching adversarial term (paper: 1).
        w_con: weight of the contextual L1 term (paper: 50).
        w_enc: weight of the latent L2 term (paper: 1).
    """

    def __init__(self, w_adv: float = 1.0, w_con: float = 50.0, w_enc: float = 1.0) -> None:
        super().__init__()
        self.w_adv, self.w_con, self.w_enc = w_adv, w_con, w_enc

    def forward(
        self,
        x: torch.Tensor,
        reconstruction: torch.Tensor,
        latent: torch.Tensor,
        latent_hat: torch.Tensor,
        features_real: torch.Tensor,
        features_fake: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Args: x, reconstruction (B, 1, H, W); latents (B, Z); features (B, C, h, w)."""
        adv = torch.mean((features_real - features_fake) ** 2)
        con = torch.mean(torch.abs(x - reconstruction))
        enc = torch.mean((latent - latent_hat) ** 2)
        total = self.w_adv * adv + self.w_con * con + self.w_enc * enc
        return total, {"g_adv": adv.item(), "g_con": con.item(), "g_enc": enc.item()}


class DiscriminatorLoss(nn.Module):
    """BCE of the discriminator: real images -> 1, reconstructions -> 0."""

    def forward(self, logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
        """Args: logits (B,) of real and reconstructed images. Returns: scalar."""
        real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
        fake = F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
        return 0.5 * (real + fake)
