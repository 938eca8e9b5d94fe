"""`AnomalyModel` adapter of the convolutional autoencoder (scoring: components)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ai_engine.models.components.autoencoder import ConvAutoEncoder
from ai_engine.models.components.reconstruction import ReconstructionModel


class ConvAEModel(ReconstructionModel):
    """Convolutional autoencoder scored by its reconstruction error."""

    model_id: ClassVar[str] = "conv_ae"

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `ConvAutoEncoder` for the arguments."""
        return ConvAutoEncoder(**init_args)
