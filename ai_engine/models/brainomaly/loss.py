"""Brainomaly's generator loss (seed 003, eq. 2.16-2.19); critic: components/wgan_gp.py."""

from __future__ import annotations

import torch
from torch import nn


class GeneratorLoss(nn.Module):
    """``-E[D(healthy(x_M))] + lambda_id * E|healthy(x_H) - x_H|_1``.

    The seed writes the adversarial term as ``+E[D(...)]`` with the critic's sign convention;
    with our critic (high = real) the generator minimises ``-D``.

    Args:
        lambda_id: weight of the identity loss on known-normal images.
    """

    def __init__(self, lambda_id: float = 10.0) -> None:
        super().__init__()
        self.lambda_id = lambda_id

    def forward(
        self, critic_fake: torch.Tensor, healthy_normal: torch.Tensor, x_normal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (total, adversarial, identity) scalars."""
        adversarial = -critic_fake.mean()
        identity = (healthy_normal - x_normal).abs().mean()
        return adversarial + self.lambda_id * identity, adversarial, identity
