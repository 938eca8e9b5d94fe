"""`AnomalyModel` adapter of the coarse-noise denoising autoencoder (Kascenas et al. 2022).

Training (`DenoisingTrainer`): healthy slices get coarse noise (`torch_model.coarse_noise`,
``optim.noise_res`` x ``noise_res`` grid, ``optim.noise_std``), only inside the brain when the
input is brain-extracted (``optim.noise_in_brain``, default true: outside the brain the input
is 0 and stays 0), and the U-Net learns to return the clean slice (mean squared error).

Anomaly map: the residual ``|x - f(x)|`` (``scoring.residual: positive`` keeps only what is
brighter than the reconstruction), ``scoring.median_size`` x ``median_size`` median filter,
inside the brain mask eroded by ``scoring.erosion_px`` pixels (0 elsewhere), the same
post-processing as the FLAIR threshold baseline. For an image that is not brain-extracted
(no zero background) the eroded mask is simply most of the image. Score rules: the shared
reconstruction rules (`components.reconstruction`), applied to this map.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.base import Trainer
from ai_engine.models.components.brain_map import eroded_brain, median_filter
from ai_engine.models.components.reconstruction import (
    ReconstructionModel,
    ReconstructionTrainer,
    image_scores,
)
from ai_engine.models.dae.torch_model import DenoisingUNet, coarse_noise
from ai_engine.types import AnomalyOutput, ModelCard


class DenoisingAEModel(ReconstructionModel):
    """Coarse-noise denoising U-Net; ``scoring`` adds ``median_size`` (5), ``erosion_px`` (2)."""

    model_id: ClassVar[str] = "dae"
    map_description: ClassVar[str] = (
        "denoising residual |x - f(x)| (Kascenas et al. 2022), median-filtered, inside the "
        "eroded brain"
    )

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        super().__init__(card, network)
        scoring: dict[str, Any] = card.training.get("scoring", {})
        self.median_size = int(scoring.get("median_size", 5))
        self.erosion_px = int(scoring.get("erosion_px", 2))

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `DenoisingUNet` for the arguments."""
        return DenoisingUNet(**init_args)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1] (see the module docstring for the map)."""
        x = x.to(self.device).float()
        reconstruction = self.reconstruct(x).float()
        residual = x - reconstruction
        error = residual.clamp_min(0) if self.residual == "positive" else residual.abs()
        anomaly_map = median_filter(error, self.median_size) * eroded_brain(x, self.erosion_px)
        score = image_scores(x, reconstruction, anomaly_map, self.score_rule, self.top_fraction)
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=reconstruction)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """Adam on the denoising loss with ``optim``'s noise (see the module docstring)."""
        return DenoisingTrainer(network, optim)


def noisy(x: torch.Tensor, resolution: int, std: float, in_brain: bool) -> torch.Tensor:
    """``x`` plus coarse noise, only where ``x > 0`` when ``in_brain``."""
    noise = coarse_noise(x, resolution, std)
    if in_brain:
        noise = noise * (x > 0).to(x.dtype)
    return x + noise


class DenoisingTrainer(ReconstructionTrainer):
    """The reconstruction trainer (Adam, ReduceLROnPlateau) on ``mse(f(x + coarse noise), x)``.

    Validation: the same loss on healthy val images with a fixed noise seed (label-free); it
    drives ReduceLROnPlateau.

    ``optim`` keys: ``lr`` (1e-3), ``weight_decay`` (0), ``noise_res`` (16), ``noise_std``
    (0.1), ``noise_in_brain`` (true).
    """

    def __init__(self, network: nn.Module, optim: dict[str, Any]) -> None:
        super().__init__(DenoisingAEModel, network, optim)
        self.resolution = int(optim.get("noise_res", 16))
        self.std = float(optim.get("noise_std", 0.1))
        self.in_brain = bool(optim.get("noise_in_brain", True))

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Denoising loss of a clean (B, 1, H, W) batch."""
        x_noisy = noisy(batch, self.resolution, self.std, self.in_brain)
        return torch.mean((self.network(x_noisy) - batch) ** 2)

    def validation_error(self, x: torch.Tensor) -> float:
        """Summed squared denoising error of a chunk (noise from the running seed)."""
        return float(self.loss(x)) * x.numel()

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Denoising MSE of healthy val images, noise from a fixed seed (same every epoch)."""
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            return super().validation_loss(x_val_normal)
        finally:
            torch.random.set_rng_state(state)
