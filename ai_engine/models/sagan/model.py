"""`AnomalyModel` adapter of SAGAN: the map is |x - restored(x)| (shared reconstruction scoring)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.base import Trainer
from ai_engine.models.components.reconstruction import ReconstructionModel
from ai_engine.models.components.wgan_gp import SemiSupervisedGanTrainer
from ai_engine.models.sagan.loss import GeneratorLoss, synthesise_anomalies
from ai_engine.models.sagan.torch_model import SaganCritic, SaganGenerator


class SaganModel(ReconstructionModel):
    """SAGAN and its chapter-3 variants (``init_args.position_encoding``, ``init_args.backbone``).

    The "reconstruction" is the generator's restored (healthy-looking) image.
    """

    model_id: ClassVar[str] = "sagan"
    map_description: ClassVar[str] = "absolute difference between the image and its restoration"

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `SaganGenerator` for the arguments."""
        return SaganGenerator(**init_args)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """WGAN-GP trainer; the critic gets the generator's absolute position encoding."""
        if not isinstance(network, SaganGenerator):
            raise TypeError(f"expected SaganGenerator, got {type(network).__name__}")
        positions = network.positions
        critic = SaganCritic(
            positions.encoding,
            positions.grid,
            positions.dim,
            tuple(optim.get("critic_channels", (32, 64, 128))),
        )
        return SaganTrainer(network, critic, optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """Mean of the difference map first (as Brainomaly), then the shared alternatives."""
        return ("map_mean", "map_top", "mse")


class SaganTrainer(SemiSupervisedGanTrainer):
    """Generator: identity (normal), restoration (pseudo-anomalies), adversarial (unlabelled).

    ``optim`` adds ``lambda_id`` (10) and ``lambda_rec`` (10) to the keys of
    `SemiSupervisedGanTrainer` (one critic step per generator step by default).
    """

    def __init__(self, generator: SaganGenerator, critic: nn.Module, optim: dict[str, Any]) -> None:
        super().__init__(generator, critic, optim)
        self.loss = GeneratorLoss(
            float(optim.get("lambda_id", 10.0)), float(optim.get("lambda_rec", 10.0))
        )

    def generator_loss(
        self, x_normal: torch.Tensor, x_mix: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 2.26 on a normal batch, its pseudo-anomalous copy and an unlabelled batch."""
        x_pseudo = synthesise_anomalies(x_normal)
        total, adversarial, identity, reconstruction = self.loss(
            self.critic(self.healthy(x_mix)),
            self.healthy(x_normal),
            self.healthy(x_pseudo),
            x_normal,
        )
        return total, {
            "g_adv": adversarial.item(),
            "g_identity": identity.item(),
            "g_rec": reconstruction.item(),
        }
