"""`AnomalyModel` adapter of HealthyGAN: the map is |x - healthy(x)|, the score its mean."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.base import Trainer
from ai_engine.models.components.reconstruction import ReconstructionModel
from ai_engine.models.components.wgan_gp import PatchDiscriminator, SemiSupervisedGanTrainer
from ai_engine.models.healthygan.loss import GeneratorLoss
from ai_engine.models.healthygan.torch_model import MaskedGenerator


class HealthyGANModel(ReconstructionModel):
    """HealthyGAN; the "reconstruction" is the masked healthy translation of the input."""

    model_id: ClassVar[str] = "healthygan"
    map_description: ClassVar[str] = "absolute difference between the image and its healthy version"

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `MaskedGenerator` for the arguments."""
        return MaskedGenerator(**init_args)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """WGAN-GP (critic: known-healthy real, translations of the mix fake, eq. 2.8)."""
        if not isinstance(network, MaskedGenerator):
            raise TypeError(f"expected MaskedGenerator, got {type(network).__name__}")
        critic = PatchDiscriminator(1, tuple(optim.get("critic_channels", (32, 64, 128))))
        return HealthyGANTrainer(network, critic, optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """``map_mean`` (the paper's score) first, ``map_top`` as an alternative."""
        return ("map_mean", "map_top")


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

    def healthy(self, x: torch.Tensor) -> torch.Tensor:
        """The masked healthy translation (B, 1, H, W)."""
        out: torch.Tensor = self.generator(x)
        return out

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
