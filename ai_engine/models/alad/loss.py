"""ALAD losses (Zenati et al. 2018; seed 003 section 2.4.2 gives L_xz, L_xx, L_zz).

With BCE(l, y) the binary cross-entropy of logit l against label y:

- discriminators (maximise the three objectives):
  ``BCE(D_xz(x, E(x)), 1) + BCE(D_xz(G(z), z), 0)
  + BCE(D_xx(x, x), 1) + BCE(D_xx(x, G(E(x))), 0)
  + BCE(D_zz(z, z), 1) + BCE(D_zz(z, E(G(z))), 0)``;
- generator and encoder (the paper's reference implementation; labels flipped):
  ``BCE(D_xz(G(z), z), 1) + BCE(D_xz(x, E(x)), 0)`` (adversarial, G and E respectively)
  ``+ BCE(D_xx(x, x), 0) + BCE(D_xx(x, G(E(x))), 1)``  (cycle consistency in x)
  ``+ BCE(D_zz(z, z), 0) + BCE(D_zz(z, E(G(z))), 1)``  (cycle consistency in z).
  G's gradient of this sum is that of its own loss (adversarial_G + cycle) and E's that of
  its own (adversarial_E + cycle), so one optimiser over G and E is equivalent to two.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


class DiscriminatorLoss(nn.Module):
    """Sum of the three discriminators' BCE losses; returns (total, xz, xx, zz)."""

    def forward(
        self,
        xz_real: torch.Tensor,
        xz_fake: torch.Tensor,
        xx_real: torch.Tensor,
        xx_fake: torch.Tensor,
        zz_real: torch.Tensor,
        zz_fake: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three discriminators' losses from their logits (B, 1).

        ``*_real``: D_xz(x, E(x)), D_xx(x, x), D_zz(z, z); ``*_fake``: D_xz(G(z), z),
        D_xx(x, G(E(x))), D_zz(z, E(G(z))).
        """
        xz = _bce(xz_real, 1.0) + _bce(xz_fake, 0.0)
        xx = _bce(xx_real, 1.0) + _bce(xx_fake, 0.0)
        zz = _bce(zz_real, 1.0) + _bce(zz_fake, 0.0)
        return xz + xx + zz, xz, xx, zz


class GeneratorEncoderLoss(nn.Module):
    """G + E loss with flipped labels; returns (total, adversarial, cycle)."""

    def forward(
        self,
        xz_real: torch.Tensor,
        xz_fake: torch.Tensor,
        xx_real: torch.Tensor,
        xx_fake: torch.Tensor,
        zz_real: torch.Tensor,
        zz_fake: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same logits as `DiscriminatorLoss`, computed with gradients to G and E."""
        adversarial = _bce(xz_fake, 1.0) + _bce(xz_real, 0.0)
        cycle = _bce(xx_real, 0.0) + _bce(xx_fake, 1.0) + _bce(zz_real, 0.0) + _bce(zz_fake, 1.0)
        return adversarial + cycle, adversarial, cycle
