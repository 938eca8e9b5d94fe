"""Losses of the federated conditional GAN: L = L_GAN + lambda * L_cond (seed 000, appendix).

``L_GAN`` is the non-saturating binary cross-entropy GAN loss. ``L_cond`` is the cosine
conditional term: the discriminator's auxiliary head predicts the attribute vector back from
an image, and ``L_cond = 1 - cos(predicted, given)`` averaged over images whose attributes are
known (an all-zero vector = unknown is left out). D learns the head on *real* images with their
recorded attributes; G is penalised when the head, applied to G(PD, CD, z), does not point in
the direction of the attributes it was asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cond_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cosine(predicted, target)`` over rows with a non-zero target; 0 if none.

    Args:
        predicted: (B, A) attributes predicted from images.
        target: (B, A) attributes given (0 = unknown entry).
    """
    # A weighted mean instead of indexing the known rows: no data-dependent shape, so a GPU
    # step never waits for the host to count them.
    known = (target.abs().sum(dim=1) > 0).to(predicted.dtype)
    cos = F.cosine_similarity(predicted, target, dim=1, eps=1e-6)
    return ((1.0 - cos) * known).sum() / known.sum().clamp_min(1.0)


class DiscriminatorLoss(nn.Module):
    """BCE(real -> 1) + BCE(fake -> 0) + lambda * L_cond(aux head on real images).

    The two halves are also available apart (`real_term`, `fake_term`): under differential
    privacy only the real half may go through per-sample clipping, one row per real image.
    """

    def __init__(self, lambda_cond: float = 1.0) -> None:
        super().__init__()
        self.lambda_cond = float(lambda_cond)

    def real_term(
        self, real_logits: torch.Tensor, real_attr_pred: torch.Tensor, real_attr: torch.Tensor
    ) -> torch.Tensor:
        """BCE(real -> 1) + lambda * L_cond, means over the real batch (B,) / (B, A)."""
        adv = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        return adv + self.lambda_cond * cond_loss(real_attr_pred, real_attr)

    def fake_term(self, fake_logits: torch.Tensor) -> torch.Tensor:
        """BCE(fake -> 0), mean over the fake batch (B',)."""
        return F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))

    def forward(
        self,
        real_logits: torch.Tensor,
        fake_logits: torch.Tensor,
        real_attr_pred: torch.Tensor,
        real_attr: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar loss from D's outputs on a real batch (B,) / (B, A) and a fake batch (B',)."""
        return self.real_term(real_logits, real_attr_pred, real_attr) + self.fake_term(fake_logits)


class GeneratorLoss(nn.Module):
    """Non-saturating BCE(fake -> 1) + lambda * L_cond(aux head on fakes, requested attrs)."""

    def __init__(self, lambda_cond: float = 1.0) -> None:
        super().__init__()
        self.lambda_cond = float(lambda_cond)

    def forward(
        self, fake_logits: torch.Tensor, fake_attr_pred: torch.Tensor, requested: torch.Tensor
    ) -> torch.Tensor:
        """Scalar loss from D's outputs on G's images (B,) / (B, A) and the requested (B, A)."""
        adv = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
        return adv + self.lambda_cond * cond_loss(fake_attr_pred, requested)
