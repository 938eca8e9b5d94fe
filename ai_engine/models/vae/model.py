"""`AnomalyModel` adapter of the convolutional VAE; scored like the AE (reconstruction error)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.components.autoencoder import ConvVAE
from ai_engine.models.components.reconstruction import ReconstructionModel
from ai_engine.models.vae.loss import VAELoss


class VAEModel(ReconstructionModel):
    """VAE; the map is the error of the reconstruction from the latent mean."""

    model_id: ClassVar[str] = "vae"

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `ConvVAE` for the arguments."""
        return ConvVAE(**init_args)

    @classmethod
    def training_loss(cls, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO (beta 1) with a reparameterised sample."""
        if not isinstance(network, ConvVAE):
            raise TypeError(f"expected ConvVAE, got {type(network).__name__}")
        reconstruction, mu, logvar = network.sample_forward(x)
        loss: torch.Tensor = VAELoss()(x, reconstruction, mu, logvar)
        return loss
