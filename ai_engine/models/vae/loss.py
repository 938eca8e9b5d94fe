"""VAE loss: reconstruction (MSE, summed over pixels) + beta * KL(q(z|x) || N(0, I))."""

from __future__ import annotations

import torch
from torch import nn


class VAELoss(nn.Module):
    """Negative ELBO per image, averaged over the batch.

    Args:
        beta: weight of the KL term (1 = the plain ELBO).
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(
        self, x: torch.Tensor, reconstruction: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> torch.Tensor:
        """Args: x, reconstruction (B, 1, H, W); mu, logvar (B, Z). Returns: scalar."""
        rec = ((x - reconstruction) ** 2).flatten(1).sum(1)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
        return torch.mean(rec + self.beta * kl) / x[0].numel()
