"""Training loss of the convolutional autoencoder: pixel-wise mean squared error (seed 001)."""

from __future__ import annotations

import torch
from torch import nn


class ReconstructionLoss(nn.Module):
    """Mean squared error between the image and its reconstruction."""

    def forward(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Args: x, reconstruction: (B, 1, H, W). Returns: scalar loss."""
        return torch.mean((x - reconstruction) ** 2)
