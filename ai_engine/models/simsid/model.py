"""`AnomalyModel` adapter of SimSID (Xiang et al., TPAMI 2024) and its adversarial trainer.

Anomaly map: the absolute error between the image and its memory-restored (student)
reconstruction, Gaussian-smoothed. Image score rules: ``disc`` (SimSID's own: minus the
discriminator's logit on the reconstruction, so higher is more anomalous; the paper's
``1 - sigmoid(standardised D)`` is a monotone function of it and has the same AUROC) and the
shared reconstruction rules ``map_top``, ``map_mean``, ``mse``. A lung-restricted card
(``anatomy: lungs``) scores from the map inside the lung field: ``disc`` judges the whole image
and cannot be restricted, so such a card must use a map rule.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ai_engine.errors import ModelLoadError
from ai_engine.models.base import Trainer
from ai_engine.models.components.reconstruction import (
    SCORE_RULES,
    ReconstructionModel,
    image_scores,
    smoothed_error,
)
from ai_engine.models.simsid.torch_model import SimSIDNetwork
from ai_engine.types import AnomalyOutput, ModelCard

DISC_RULE = "disc"


class SimSIDModel(ReconstructionModel):
    """SimSID: space-aware memory in-painting, scored by its discriminator or its residual."""

    model_id: ClassVar[str] = "simsid"
    map_description: ClassVar[str] = (
        "absolute error of the memory-restored (in-painted) reconstruction, Gaussian-smoothed"
    )

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        """Wrap ``network``; a card with an anatomy region must use a map rule.

        Raises:
            ModelLoadError: the card restricts to an anatomy region but scores with ``disc``
                (a whole-image verdict the region cannot restrict).
        """
        super().__init__(card, network)
        if card.anatomy and self.score_rule == DISC_RULE:
            raise ModelLoadError(
                f"card {card.name!r}: score rule {DISC_RULE!r} judges the whole image and cannot "
                f"be restricted to the {card.anatomy!r} region; use map_top, map_mean or mse"
            )

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `SimSIDNetwork` for the arguments."""
        return SimSIDNetwork(**init_args)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1] (see the module docstring)."""
        net = self.network
        if not isinstance(net, SimSIDNetwork):
            raise TypeError(f"expected SimSIDNetwork, got {type(net).__name__}")
        x = x.to(self.device)
        reconstruction = net(x).float()
        x = x.float()
        anomaly_map = smoothed_error(x, reconstruction, self.map_sigma, self.residual)
        if self.score_rule == DISC_RULE:
            score = -net.critic(reconstruction).float()
        else:
            score = image_scores(x, reconstruction, anomaly_map, self.score_rule, self.top_fraction)
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=reconstruction)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """SimSID's generator/discriminator training (see `SimSIDTrainer`)."""
        if not isinstance(network, SimSIDNetwork):
            raise TypeError(f"expected SimSIDNetwork, got {type(network).__name__}")
        return SimSIDTrainer(network, optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """SimSID's discriminator score, then the shared reconstruction rules."""
        return (DISC_RULE, *SCORE_RULES)


class SimSIDTrainer:
    """SimSID's losses with two Adam optimisers (betas 0.5, 0.999 as in the authors' setup).

    Discriminator, every step: ``d_w (BCE(D(x), 1) + BCE(D(x_s), 0))`` on the real batch and
    the detached student reconstruction ``x_s``. Generator, every ``n_critic``-th step:
    ``recon_w MSE(x_s, x) + t_w MSE(x_t, x) + dist_w L_dist + g_w BCE(D(x_s), 1)`` (``x_t``
    the teacher's reconstruction, ``L_dist`` the summed MSE between student and teacher decoder
    features). Cosine learning-rate decay to ``lr_min_ratio * lr`` over ``epochs``.

    ``optim`` keys: ``lr`` (1e-4), ``gan_lr`` (= lr), ``recon_w`` (10), ``t_w`` (0.01),
    ``dist_w`` (0.001), ``g_w`` (0.005), ``d_w`` (0.005), ``n_critic`` (2), ``weight_decay``
    (1e-5), ``epochs`` (for the schedule), ``lr_min_ratio`` (0.1).
    """

    def __init__(self, network: SimSIDNetwork, optim: dict[str, Any]) -> None:
        self.network = network
        lr = float(optim.get("lr", 1e-4))
        self.opt_g = torch.optim.Adam(
            network.generator_parameters(), lr=lr, betas=(0.5, 0.999),
            weight_decay=float(optim.get("weight_decay", 1e-5)),
        )  # fmt: skip
        self.opt_d = torch.optim.Adam(
            network.discriminator.parameters(), lr=float(optim.get("gan_lr", lr)),
            betas=(0.5, 0.999),
        )  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.opt_g,
            T_max=max(1, int(optim.get("epochs", 1))),
            eta_min=lr * float(optim.get("lr_min_ratio", 0.1)),
        )
        self.recon_w = float(optim.get("recon_w", 10.0))
        self.t_w = float(optim.get("t_w", 0.01))
        self.dist_w = float(optim.get("dist_w", 0.001))
        self.g_w = float(optim.get("g_w", 0.005))
        self.d_w = float(optim.get("d_w", 0.005))
        self.n_critic = max(1, int(optim.get("n_critic", 2)))
        self.steps = 0

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One discriminator step and, every ``n_critic`` steps, one generator step."""
        net = self.network
        net.train()
        out = net.outputs(batch)
        real = net.critic(batch)
        fake = net.critic(out.reconstruction.detach())
        loss_d = self.d_w * (
            F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        )
        self.opt_d.zero_grad()
        loss_d.backward()  # type: ignore[no-untyped-call]
        self.opt_d.step()
        losses = {"d_loss": loss_d.item()}
        if self.steps % self.n_critic == 0:
            for p in net.discriminator.parameters():
                p.requires_grad_(False)
            fake = net.critic(out.reconstruction)
            recon = F.mse_loss(out.reconstruction, batch)
            teacher = F.mse_loss(out.teacher_reconstruction, batch)
            g_adv = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
            loss_g = (
                self.recon_w * recon
                + self.t_w * teacher
                + self.dist_w * out.distillation
                + self.g_w * g_adv
            )
            self.opt_g.zero_grad()
            loss_g.backward()  # type: ignore[no-untyped-call]
            self.opt_g.step()
            for p in net.discriminator.parameters():
                p.requires_grad_(True)
            losses.update(
                g_loss=loss_g.item(),
                recon_mse=recon.item(),
                teacher_mse=teacher.item(),
                distillation=out.distillation.item(),
                g_adv=g_adv.item(),
            )
        self.steps += 1
        return losses

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Mean squared error of the student reconstruction of healthy val images."""
        self.network.eval()
        total = 0.0
        for start in range(0, len(x_val_normal), 64):
            x = x_val_normal[start : start + 64]
            total += float(torch.sum((self.network(x) - x) ** 2))
        return total / max(1, x_val_normal.numel())

    def end_epoch(self, val_loss: float) -> None:
        """Cosine learning-rate decay of the generator."""
        del val_loss
        self.scheduler.step()
