"""`AnomalyModel` adapter of Brainomaly: the map is |x - healthy(x)|, the score its mean."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.brainomaly.loss import GeneratorLoss
from ai_engine.models.brainomaly.torch_model import AdditiveMapGenerator
from ai_engine.models.components.translation import TranslationGanModel
from ai_engine.models.components.wgan_gp import SemiSupervisedGanTrainer


class BrainomalyTrainer(SemiSupervisedGanTrainer):
    """Critic: normal images real, healthy versions of M fake; generator: adversarial + identity.

    ``optim`` adds ``lambda_id`` (10) to the keys of `SemiSupervisedGanTrainer`.
    """

    n_critic_default = 2

    def __init__(
        self, generator: AdditiveMapGenerator, critic: nn.Module, optim: dict[str, Any]
    ) -> None:
        super().__init__(generator, critic, optim)
        self.loss = GeneratorLoss(float(optim.get("lambda_id", 10.0)))

    def generator_loss(
        self, x_normal: torch.Tensor, x_mix: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Adversarial on M + lambda_id * identity on H."""
        total, adversarial, identity = self.loss(
            self.critic(self.healthy(x_mix)), self.healthy(x_normal), x_normal
        )
        return total, {"g_adv": adversarial.item(), "g_identity": identity.item()}


class BrainomalyModel(TranslationGanModel):
    """Brainomaly; the "reconstruction" is the generator's healthy version of the input.

    Scoring is the shared reconstruction scoring (`ai_engine.models.components.reconstruction`):
    with ``map_sigma: 0`` and rule ``map_mean`` the score is the paper's mean of the absolute
    difference map.
    """

    model_id: ClassVar[str] = "brainomaly"
    generator_class: ClassVar[type[nn.Module]] = AdditiveMapGenerator
    trainer_class: ClassVar[type[SemiSupervisedGanTrainer]] = BrainomalyTrainer
