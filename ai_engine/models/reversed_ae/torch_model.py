"""The reversed autoencoder's network: the conv VAE with access to its multi-scale encoder features.

The encoder doubles as the feature extractor of the reversed embedding loss and of the
perceptual part of the anomaly map (no pretrained network is available offline).
"""

from __future__ import annotations

import torch

from ai_engine.models.components.autoencoder import ConvVAE


class ReversedAutoEncoder(ConvVAE):
    """`ConvVAE` (same arguments) plus `features` and separate encoder/decoder parameter groups."""

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature maps after each of the 4 stages, (B, C_s, H / 2**s, W / 2**s)."""
        out = []
        h = x
        for module in self.body.encoder:
            h = module(h)
            if isinstance(module, torch.nn.MaxPool2d):
                out.append(h)
        return out

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of the encoder (convolutions, mean and log-variance heads)."""
        return [
            *self.body.encoder.parameters(),
            *self.body.to_latent.parameters(),
            *self.to_logvar.parameters(),
        ]

    def decoder_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters of the decoder."""
        return [*self.body.from_latent.parameters(), *self.body.decoder.parameters()]
