"""ALOCC losses (Sabokrou et al. 2018; seed 003 §2.4.3): L = L_{R+D} + λ L_R.

- `DiscriminatorLoss`: D maximises log D(X) + log(1 - D(R(X̃))) (BCE: X real, R(X̃) fake).
- `GeneratorLoss` (for R): non-saturating adversarial term -log D(R(X̃)) plus
  ``lam * ||X - R(X̃)||²`` (mean over pixels), ``lam = 0.4`` as in the seed (the authors' public
  code defaults to ``r_alpha = 0.2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeneratorLoss(nn.Module):
    """Loss of R; returns (total, terms).

    Args:
        lam: weight λ of the reconstruction term.
    """

    def __init__(self, lam: float = 0.4) -> None:
        super().__init__()
        self.lam = lam

    def forward(
        self, x: torch.Tensor, reconstruction: torch.Tensor, logit_fake: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Args: x, reconstruction (B, 1, H, W) of the noisy x; logit_fake (B,) = D(R(x̃))."""
        adv = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
        rec = torch.mean((x - reconstruction) ** 2)
        return adv + self.lam * rec, {"r_adv": adv.item(), "r_rec": rec.item()}


class DiscriminatorLoss(nn.Module):
    """BCE of D: X -> 1 (target class), R(X̃) -> 0."""

    def forward(self, logit_real: torch.Tensor, logit_fake: torch.Tensor) -> torch.Tensor:
        """Args: logits (B,) of real images and of reconstructions. Returns: scalar."""
        real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
        fake = F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
        return real + fake
