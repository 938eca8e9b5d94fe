"""`AnomalyModel` adapter of HealthyGAN: the map is |x - healthy(x)|, the score its mean."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.components.translation import TranslationGanModel
from ai_engine.models.components.wgan_gp import SemiSupervisedGanTrainer
from ai_engine.models.healthygan.loss import GeneratorLoss
from ai_engine.models.healthygan.torch_model import MaskedGenerator


class HealthyGANTrainer(SemiSupervisedGanTrainer):
    """Generator: adversarial on mix and healthy, identity, masked reconstruction, focus.

    ``optim`` adds ``lambda_rec``, ``lambda_id`` (10), ``lambda_focus`` (1), ``lambda_fs`` (1),
    ``lambda_fz`` (0.1) to the keys of `SemiSupervisedGanTrainer`.
    """

    def __init__(
        self, generator: MaskedGenerator, critic: nn.Module, optim: dict[str, Any]
    ) -> None:
        super().__init__(generator, critic, optim)
        self.masked = generator
        self.loss = GeneratorLoss(
            float(optim.get("lambda_rec", 10.0)),
            float(optim.get("lambda_id", 10.0)),
            float(optim.get("lambda_focus", 1.0)),
            float(optim.get("lambda_fs", 1.0)),
            float(optim.get("lambda_fz", 0.1)),
        )

    def generator_loss(
        self, x_normal: torch.Tensor, x_mix: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 2.14 on a known-healthy batch and a batch of the unlabelled mix."""
        b_int_m, mask_m = self.masked.parts(x_mix)
        b_int_n, mask_n = self.masked.parts(x_normal)
        healthy_m = b_int_m * mask_m + x_mix * (1 - mask_m)
        healthy_n = b_int_n * mask_n + x_normal * (1 - mask_n)
        critic_outputs = torch.cat(
            [self.critic(healthy_m).flatten(), self.critic(healthy_n).flatten()]
        )
        total, terms = self.loss(critic_outputs, x_mix, b_int_m, mask_m, x_normal, b_int_n, mask_n)
        return total, {name: float(value.item()) for name, value in terms.items()}


class HealthyGANModel(TranslationGanModel):
    """HealthyGAN; the "reconstruction" is the masked healthy translation of the input."""

    model_id: ClassVar[str] = "healthygan"
    generator_class: ClassVar[type[nn.Module]] = MaskedGenerator
    trainer_class: ClassVar[type[SemiSupervisedGanTrainer]] = HealthyGANTrainer
