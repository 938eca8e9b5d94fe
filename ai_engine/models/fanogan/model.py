"""`AnomalyModel` adapter of f-AnoGAN: two training phases, one forward pass to score.

Training (`FAnoGANTrainer`, ``optim`` keys): the first ``gan_epochs`` epochs train the WGAN-GP
(critic every batch, generator every ``n_critic`` batches; Adam ``lr``, betas
(``beta1``, ``beta2``) = (0, 0.9) as in Gulrajani et al.); the remaining epochs train only the
encoder with the izi_f loss against the frozen G and critic (Adam ``encoder_lr``). The phase
switches in ``end_epoch``, so ``optim.epochs`` = GAN epochs + encoder epochs.

Scoring (``card.training["scoring"]``): ``rule`` = ``izi_f`` (A_R + kappa * A_D, the paper's
score), ``image_residual`` (A_R) or ``feature_residual`` (A_D); ``kappa`` (1.0); ``map_sigma``
(2.0): the map is ``|x - G(E(x))|`` smoothed with a Gaussian of that sigma (px). The
reconstruction rules of `ai_engine.models.components.reconstruction` (``mse``, ``map_mean``,
``map_top`` with ``top_fraction``) are offered as well.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.base import AnomalyModel, Trainer
from ai_engine.models.components.reconstruction import SCORE_RULES as RECONSTRUCTION_RULES
from ai_engine.models.components.reconstruction import image_scores, smoothed_error
from ai_engine.models.fanogan.loss import CriticLoss, GeneratorLoss, IzifLoss
from ai_engine.models.fanogan.torch_model import FAnoGANNetwork
from ai_engine.types import AnomalyOutput, ModelCard

SCORE_RULES = ("izi_f", "image_residual", "feature_residual", *RECONSTRUCTION_RULES)


def _as_fanogan(network: nn.Module) -> FAnoGANNetwork:
    if not isinstance(network, FAnoGANNetwork):
        raise TypeError(f"expected FAnoGANNetwork, got {type(network).__name__}")
    return network


class FAnoGANModel(AnomalyModel):
    """f-AnoGAN: encoder E maps x to z in one pass; score = izi_f residual of G(E(x))."""

    model_id: ClassVar[str] = "fanogan"
    map_description: ClassVar[str] = "absolute residual |x - G(E(x))|, Gaussian-smoothed"

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        super().__init__(card, network)
        self.gan = _as_fanogan(network)
        scoring: dict[str, Any] = card.training.get("scoring", {})
        self.score_rule = str(scoring.get("rule", "izi_f"))
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"score rule {self.score_rule!r}; valid: {', '.join(SCORE_RULES)}")
        self.izif = IzifLoss(float(scoring.get("kappa", 1.0)))
        self.map_sigma = float(scoring.get("map_sigma", 2.0))
        self.top_fraction = float(scoring.get("top_fraction", 0.05))

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `FAnoGANNetwork` for the arguments."""
        return FAnoGANNetwork(**init_args)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1]."""
        x = x.to(self.device).float()
        reconstruction = self.gan(x).float()
        image, feature = self.izif.terms(
            x, reconstruction, self.gan.critic.features(x), self.gan.critic.features(reconstruction)
        )
        anomaly_map = smoothed_error(x, reconstruction, self.map_sigma)
        if self.score_rule == "izi_f":
            score = image + self.izif.kappa * feature
        elif self.score_rule == "image_residual":
            score = image
        elif self.score_rule == "feature_residual":
            score = feature
        else:
            score = image_scores(x, reconstruction, anomaly_map, self.score_rule, self.top_fraction)
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=reconstruction)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """WGAN-GP for ``optim.gan_epochs`` epochs, then izi_f encoder training."""
        return FAnoGANTrainer(_as_fanogan(network), optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """``izi_f`` (the paper's), its two terms, and the reconstruction rules."""
        return SCORE_RULES


class FAnoGANTrainer:
    """The two f-AnoGAN phases behind the one `Trainer` protocol.

    Every step returns ``critic_loss``, ``generator_loss``, ``wasserstein`` and
    ``encoder_loss``; the terms of the phase that is not running are reported as 0.0, and
    ``generator_loss`` is the last generator update's (G is updated every ``n_critic`` steps).

    Validation loss (label-free): in the GAN phase, the critic's Wasserstein estimate between
    healthy val images and fixed generated samples (lower: G closer to healthy images); in
    the encoder phase, the mean izi_f loss of healthy val images. The two are not comparable,
    so configs select the ``last`` epoch.
    """

    def __init__(self, network: FAnoGANNetwork, optim: dict[str, Any]) -> None:
        self.network = network
        self.gan_epochs = int(optim.get("gan_epochs", 1))
        self.n_critic = max(1, int(optim.get("n_critic", 5)))
        lr = float(optim.get("lr", 1e-4))
        betas = (float(optim.get("beta1", 0.0)), float(optim.get("beta2", 0.9)))
        self.opt_g = torch.optim.Adam(network.generator.parameters(), lr=lr, betas=betas)
        self.opt_c = torch.optim.Adam(network.critic.parameters(), lr=lr, betas=betas)
        self.opt_e = torch.optim.Adam(
            network.encoder.parameters(),
            lr=float(optim.get("encoder_lr", lr)),
            betas=betas,
        )
        self.critic_loss = CriticLoss(float(optim.get("gp_weight", 10.0)))
        self.generator_loss = GeneratorLoss()
        self.izif = IzifLoss(float(optim.get("kappa", 1.0)))
        self.epoch = 0
        self.batches = 0
        self.last_g = 0.0
        generator = torch.Generator().manual_seed(int(optim.get("val_seed", 0)))
        self.val_z = torch.randn(256, network.latent_dim, generator=generator)
        self._freeze_for_phase()

    @property
    def phase(self) -> str:
        """``gan`` during the first ``gan_epochs`` epochs, then ``encoder``."""
        return "gan" if self.epoch < self.gan_epochs else "encoder"

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One step of the current phase on a (B, 1, H, W) batch of normal images."""
        if self.phase == "gan":
            return self._gan_step(batch)
        return self._encoder_step(batch)

    def _gan_step(self, batch: torch.Tensor) -> dict[str, float]:
        net = self.network
        net.generator.train()
        net.critic.train()
        z = torch.randn(len(batch), net.latent_dim, device=batch.device)
        with torch.no_grad():
            fake = net.generator(z)
        c_loss, wasserstein = self.critic_loss(net.critic, batch, fake)
        self.opt_c.zero_grad()
        c_loss.backward()  # type: ignore[no-untyped-call]
        self.opt_c.step()
        self.batches += 1
        if self.batches % self.n_critic == 0:
            z = torch.randn(len(batch), net.latent_dim, device=batch.device)
            g_loss = self.generator_loss(net.critic(net.generator(z)))
            self.opt_g.zero_grad()
            g_loss.backward()  # type: ignore[no-untyped-call]
            self.opt_g.step()
            self.last_g = g_loss.item()
        return {
            "critic_loss": c_loss.item(),
            "generator_loss": self.last_g,
            "wasserstein": float(wasserstein),
            "encoder_loss": 0.0,
        }

    def _encoder_step(self, batch: torch.Tensor) -> dict[str, float]:
        net = self.network
        net.generator.eval()  # frozen: BatchNorm uses its running statistics
        net.critic.eval()
        net.encoder.train()
        reconstruction = net.generator(net.encoder(batch))
        loss = self.izif(
            batch, reconstruction, net.critic.features(batch), net.critic.features(reconstruction)
        ).mean()
        self.opt_e.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt_e.step()
        return {
            "critic_loss": 0.0,
            "generator_loss": 0.0,
            "wasserstein": 0.0,
            "encoder_loss": loss.item(),
        }

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Wasserstein estimate (GAN phase) or mean izi_f loss (encoder phase) on healthy val."""
        net = self.network
        net.eval()
        if not len(x_val_normal):
            return math.nan
        if self.phase == "gan":
            fake = net.generator(self.val_z.to(x_val_normal.device))
            real_scores = torch.cat([net.critic(x) for x in torch.split(x_val_normal, 64)])
            return float(real_scores.mean() - net.critic(fake).mean())
        total = 0.0
        for x in torch.split(x_val_normal, 64):
            rec = net(x)
            total += float(
                self.izif(x, rec, net.critic.features(x), net.critic.features(rec)).sum()
            )
        return total / len(x_val_normal)

    def end_epoch(self, val_loss: float) -> None:
        """Count epochs: the phase switches after ``gan_epochs``."""
        self.epoch += 1
        self._freeze_for_phase()

    def _freeze_for_phase(self) -> None:
        """G and the critic are trainable in the GAN phase only."""
        for module in (self.network.generator, self.network.critic):
            for parameter in module.parameters():
                parameter.requires_grad_(self.phase == "gan")
