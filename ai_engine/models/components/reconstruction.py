"""Shared scoring of reconstruction-based models (AE, VAE): error map and image score rules.

Anomaly map: absolute reconstruction error smoothed with a Gaussian (sigma in px). Image score
rules: ``mse`` (mean squared error), ``map_mean`` (mean of the map), ``map_top`` (mean of the
highest ``top_fraction`` of map pixels). Which rule a checkpoint uses is chosen on ``val`` at
training time and written in its card (``training.scoring``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from monai.networks.layers import GaussianFilter
from torch import nn

from ai_engine.models.base import AnomalyModel, Trainer
from ai_engine.types import AnomalyOutput, ModelCard

SCORE_RULES = ("mse", "map_mean", "map_top")


@torch.no_grad()
def per_pixel_val_loss(
    x_val_normal: torch.Tensor, error_sum: Callable[[torch.Tensor], float], chunk: int = 64
) -> float:
    """A trainer's label-free validation loss: ``error_sum`` over chunks, per pixel.

    Args:
        x_val_normal: (N, 1, H, W) healthy validation images.
        error_sum: summed error of a chunk of them (the network already in eval mode).
        chunk: images per forward pass.
    """
    total = 0.0
    for start in range(0, len(x_val_normal), chunk):
        total += error_sum(x_val_normal[start : start + chunk])
    return total / max(1, x_val_normal.numel())


def reconstruction_mse(network: nn.Module, x_val_normal: torch.Tensor) -> float:
    """Mean squared error ``||x - network(x)||²`` per pixel of healthy validation images."""
    network.eval()
    return per_pixel_val_loss(x_val_normal, lambda x: float(torch.sum((network(x) - x) ** 2)))


def image_scores(
    x: torch.Tensor,
    reconstruction: torch.Tensor,
    anomaly_map: torch.Tensor,
    rule: str,
    top_fraction: float = 0.05,
) -> torch.Tensor:
    """Image-level scores (B,) from the reconstruction and the map, by ``rule``."""
    if rule == "mse":
        return ((x - reconstruction) ** 2).flatten(1).mean(1)
    if rule == "map_mean":
        return anomaly_map.flatten(1).mean(1)
    if rule == "map_top":
        flat = anomaly_map.flatten(1)
        k = max(1, round(flat.shape[1] * top_fraction))
        return flat.topk(k, dim=1).values.mean(1)
    raise ValueError(f"unknown score rule {rule!r}; valid: {', '.join(SCORE_RULES)}")


def smoothed_error(
    x: torch.Tensor, reconstruction: torch.Tensor, sigma: float, residual: str = "abs"
) -> torch.Tensor:
    """Gaussian-smoothed reconstruction error (B, 1, H, W).

    Args:
        x: input in [0, 1].
        reconstruction: the model's reconstruction.
        sigma: Gaussian sigma in pixels (0: no smoothing).
        residual: ``abs`` (|x - x̂|) or ``positive`` (max(x - x̂, 0): only what is brighter
            than the reconstruction, for lesions that are hyperintense, as on FLAIR MRI;
            Baur et al. 2021 keep the positive residual for FLAIR).
    """
    if residual == "abs":
        error = (x - reconstruction).abs()
    elif residual == "positive":
        error = (x - reconstruction).clamp_min(0)
    else:
        raise ValueError(f"unknown residual {residual!r}; valid: abs, positive")
    if sigma <= 0:
        return error
    smoother = GaussianFilter(spatial_dims=2, sigma=sigma).to(x.device)
    return torch.as_tensor(smoother(error))


class ReconstructionModel(AnomalyModel):
    """Base of models whose anomaly map is their reconstruction error.

    Subclasses implement `build_network` and, when the loss is not plain MSE,
    `training_loss`; ``reconstruct`` defaults to ``network(x)``.
    """

    model_id: ClassVar[str]
    map_description: ClassVar[str] = "absolute reconstruction error, Gaussian-smoothed"

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        super().__init__(card, network)
        scoring: dict[str, Any] = card.training.get("scoring", {})
        self.score_rule = str(scoring.get("rule", "mse"))
        self.top_fraction = float(scoring.get("top_fraction", 0.05))
        self.map_sigma = float(scoring.get("map_sigma", 2.0))
        self.residual = str(scoring.get("residual", "abs"))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> reconstruction (B, 1, H, W); deterministic at inference."""
        out: torch.Tensor = self.network(x)
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1]."""
        x = x.to(self.device)
        reconstruction = self.reconstruct(x).float()
        x = x.float()
        anomaly_map = smoothed_error(x, reconstruction, self.map_sigma, self.residual)
        score = image_scores(x, reconstruction, anomaly_map, self.score_rule, self.top_fraction)
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=reconstruction)

    @classmethod
    def training_loss(cls, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Loss of one training batch (B, 1, H, W); default: mean squared error."""
        return torch.mean((network(x) - x) ** 2)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """Adam on `training_loss`, ReduceLROnPlateau on the healthy-val reconstruction MSE."""
        return ReconstructionTrainer(cls, network, optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """The reconstruction score rules (see the module docstring)."""
        return SCORE_RULES


class ReconstructionTrainer:
    """Adam + `ReconstructionModel.training_loss`; validation: MSE on healthy val images."""

    def __init__(self, cls: type[ReconstructionModel], network: nn.Module, optim: dict[str, Any]):
        self.cls = cls
        self.network = network
        self.optimizer = torch.optim.Adam(
            network.parameters(),
            lr=float(optim.get("lr", 1e-3)),
            weight_decay=float(optim.get("weight_decay", 0.0)),
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=0.5, patience=4
        )

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Loss of one training batch: the model's `ReconstructionModel.training_loss`."""
        return self.cls.training_loss(self.network, batch)

    def validation_error(self, x: torch.Tensor) -> float:
        """Summed squared reconstruction error of a chunk of healthy validation images."""
        return float(torch.sum((self.network(x) - x) ** 2))

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One Adam step on `loss`."""
        self.network.train()
        loss = self.loss(batch)
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Mean of `validation_error` per pixel of healthy validation images (chunks of 64)."""
        self.network.eval()
        return per_pixel_val_loss(x_val_normal, self.validation_error)

    def end_epoch(self, val_loss: float) -> None:
        """Halve the learning rate when the validation loss plateaus."""
        self.scheduler.step(val_loss)
