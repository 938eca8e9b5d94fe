"""`AnomalyModel` adapter and two-optimiser trainer of GANomaly.

Image score (rule ``latent``, the paper's): ``||z - ẑ||_2`` per image (the authors' code uses
the mean squared difference, a monotone function of it: same ranking, same AUROC). Rule
``map_top`` (mean of the top 5 % map pixels) is offered for comparison only; the configs keep
``latent``. Anomaly map: |x - x̂| Gaussian-smoothed, a by-product of the generator, not what
the paper scores with.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.base import AnomalyModel, Trainer
from ai_engine.models.components.reconstruction import image_scores, smoothed_error
from ai_engine.models.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
from ai_engine.models.ganomaly.torch_model import Ganomaly
from ai_engine.types import AnomalyOutput, ModelCard

SCORE_RULES = ("latent", "map_top")


def _as_ganomaly(network: nn.Module) -> Ganomaly:
    if not isinstance(network, Ganomaly):
        raise TypeError(f"expected Ganomaly, got {type(network).__name__}")
    return network


class GanomalyModel(AnomalyModel):
    """GANomaly scored by the latent distance of the encoder-decoder-encoder generator."""

    model_id: ClassVar[str] = "ganomaly"
    map_description: ClassVar[str] = (
        "absolute error between x and the generator's reconstruction G(x), Gaussian-smoothed "
        "(a by-product: the image score is the latent distance between z and z_hat)"
    )

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        super().__init__(card, _as_ganomaly(network))
        scoring: dict[str, Any] = card.training.get("scoring", {})
        self.score_rule = str(scoring.get("rule", "latent"))
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"unknown score rule {self.score_rule!r}; valid: {SCORE_RULES}")
        self.top_fraction = float(scoring.get("top_fraction", 0.05))
        self.map_sigma = float(scoring.get("map_sigma", 2.0))

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `Ganomaly` for the arguments."""
        return Ganomaly(**init_args)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1]."""
        x = x.to(self.device).float()
        out = self.network(x)
        reconstruction = out.reconstruction.float()
        anomaly_map = smoothed_error(x, reconstruction, self.map_sigma)
        if self.score_rule == "latent":
            score = torch.linalg.vector_norm((out.latent - out.latent_hat).float(), dim=1)
        else:
            score = image_scores(x, reconstruction, anomaly_map, "map_top", self.top_fraction)
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=reconstruction)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """Two Adam optimisers (generator side, discriminator); see `GanomalyTrainer`."""
        return GanomalyTrainer(_as_ganomaly(network), optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """``latent`` (the paper's score) and ``map_top`` (comparison only)."""
        return SCORE_RULES


class GanomalyTrainer:
    """Alternating updates as in the authors' code: generator step, then discriminator step.

    ``optim`` keys: ``lr`` (2e-4), ``beta1`` (0.5), ``w_adv`` (1), ``w_con`` (50), ``w_enc`` (1).
    The discriminator is re-initialised when its loss falls below 1e-5 (authors' code).
    Validation loss (label-free, healthy val): ``w_con * L_con + w_enc * L_enc``.
    """

    def __init__(self, network: Ganomaly, optim: dict[str, Any]) -> None:
        self.network = network
        lr = float(optim.get("lr", 2e-4))
        betas = (float(optim.get("beta1", 0.5)), 0.999)
        generator = [
            *network.encoder.parameters(),
            *network.decoder.parameters(),
            *network.encoder2.parameters(),
        ]
        self.opt_g = torch.optim.Adam(generator, lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(network.discriminator.parameters(), lr=lr, betas=betas)
        self.g_loss = GeneratorLoss(
            float(optim.get("w_adv", 1.0)),
            float(optim.get("w_con", 50.0)),
            float(optim.get("w_enc", 1.0)),
        )
        self.d_loss = DiscriminatorLoss()

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One generator and one discriminator update on a (B, 1, H, W) batch."""
        net = self.network
        net.train()
        out = net(batch)
        with torch.no_grad():
            _, features_real = net.discriminate(batch)
        _, features_fake = net.discriminate(out.reconstruction)
        g_total, terms = self.g_loss(
            batch, out.reconstruction, out.latent, out.latent_hat, features_real, features_fake
        )
        self.opt_g.zero_grad()
        g_total.backward()  # type: ignore[no-untyped-call]
        self.opt_g.step()

        logit_real, _ = net.discriminate(batch)
        logit_fake, _ = net.discriminate(out.reconstruction.detach())
        d_total = self.d_loss(logit_real, logit_fake)
        self.opt_d.zero_grad()
        d_total.backward()  # type: ignore[no-untyped-call]
        self.opt_d.step()
        if d_total.item() < 1e-5:
            self._reinit_discriminator()
        return {"g_loss": g_total.item(), **terms, "d_loss": d_total.item()}

    def _reinit_discriminator(self) -> None:
        for module in self.network.discriminator.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """``w_con * L1(x, x̂) + w_enc * MSE(z, ẑ)`` on healthy val images (lower is better)."""
        self.network.eval()
        con = enc = 0.0
        n = max(1, len(x_val_normal))
        for start in range(0, len(x_val_normal), 64):
            x = x_val_normal[start : start + 64]
            out = self.network(x)
            con += float(torch.abs(x - out.reconstruction).flatten(1).mean(1).sum())
            enc += float(((out.latent - out.latent_hat) ** 2).mean(1).sum())
        return (self.g_loss.w_con * con + self.g_loss.w_enc * enc) / n

    def end_epoch(self, val_loss: float) -> None:
        """No learning-rate schedule (constant Adam lr, as in the paper)."""
