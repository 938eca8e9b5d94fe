"""`AnomalyModel` adapter of ALAD: one encoder pass and one generator pass to score.

Scoring (``card.training["scoring"]``): ``rule`` = ``features`` (the paper's main score:
``||f_xx(x, x) - f_xx(x, G(E(x)))||_1`` with f_xx the last conv feature map of D_xx, averaged
over features) or ``l1`` (``||x - G(E(x))||_1`` averaged over pixels); ``map_sigma`` (2.0): the
map is ``|x - G(E(x))|`` smoothed with a Gaussian of that sigma (px). The reconstruction
rules of `ai_engine.models.components.reconstruction` (``mse``, ``map_mean``, ``map_top`` with
``top_fraction``) are offered as well.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.alad.loss import DiscriminatorLoss, GeneratorEncoderLoss
from ai_engine.models.alad.torch_model import ALADNetwork
from ai_engine.models.base import AnomalyModel, Trainer
from ai_engine.models.components.reconstruction import SCORE_RULES as RECONSTRUCTION_RULES
from ai_engine.models.components.reconstruction import image_scores, smoothed_error
from ai_engine.types import AnomalyOutput, ModelCard

SCORE_RULES = ("features", "l1", *RECONSTRUCTION_RULES)


def _as_alad(network: nn.Module) -> ALADNetwork:
    if not isinstance(network, ALADNetwork):
        raise TypeError(f"expected ALADNetwork, got {type(network).__name__}")
    return network


class ALADModel(AnomalyModel):
    """ALAD: score from D_xx's features of (x, x) against (x, G(E(x)))."""

    model_id: ClassVar[str] = "alad"
    map_description: ClassVar[str] = "absolute residual |x - G(E(x))|, Gaussian-smoothed"

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        super().__init__(card, network)
        self.alad = _as_alad(network)
        scoring: dict[str, Any] = card.training.get("scoring", {})
        self.score_rule = str(scoring.get("rule", "features"))
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"score rule {self.score_rule!r}; valid: {', '.join(SCORE_RULES)}")
        self.map_sigma = float(scoring.get("map_sigma", 2.0))
        self.top_fraction = float(scoring.get("top_fraction", 0.05))

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `ALADNetwork` for the arguments."""
        return ALADNetwork(**init_args)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1]."""
        x = x.to(self.device).float()
        reconstruction = self.alad(x).float()
        anomaly_map = smoothed_error(x, reconstruction, self.map_sigma)
        if self.score_rule == "features":
            f_real = self.alad.d_xx.features(x, x)
            f_rec = self.alad.d_xx.features(x, reconstruction)
            score = (f_real - f_rec).abs().flatten(1).mean(1)
        elif self.score_rule == "l1":
            score = (x - reconstruction).abs().flatten(1).mean(1)
        else:
            score = image_scores(x, reconstruction, anomaly_map, self.score_rule, self.top_fraction)
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=reconstruction)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """Adam for the three discriminators, Adam for G and E; alternating per batch."""
        return ALADTrainer(_as_alad(network), optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """``features`` (the paper's), ``l1``, and the reconstruction rules."""
        return SCORE_RULES


class ALADTrainer:
    """Per batch: one update of D_xz, D_xx, D_zz, then one of G and E.

    ``optim`` keys: ``lr`` (2e-4), ``beta1`` (0.5). Validation loss (label-free): mean
    absolute reconstruction error ``|x - G(E(x))|`` of healthy val images.
    """

    def __init__(self, network: ALADNetwork, optim: dict[str, Any]) -> None:
        self.network = network
        lr = float(optim.get("lr", 2e-4))
        betas = (float(optim.get("beta1", 0.5)), 0.999)
        d_params = [p for d in network.discriminators() for p in d.parameters()]
        ge_params = [*network.generator.parameters(), *network.encoder.parameters()]
        self.opt_d = torch.optim.Adam(d_params, lr=lr, betas=betas)
        self.opt_ge = torch.optim.Adam(ge_params, lr=lr, betas=betas)
        self.d_loss = DiscriminatorLoss()
        self.ge_loss = GeneratorEncoderLoss()

    def _logits(self, x: torch.Tensor, z: torch.Tensor, detach: bool) -> tuple[torch.Tensor, ...]:
        net = self.network
        with torch.set_grad_enabled(not detach):
            z_x = net.encoder(x)
            x_z = net.generator(z)
            rec_x = net.generator(z_x)
            rec_z = net.encoder(x_z)
        if detach:
            z_x, x_z, rec_x, rec_z = z_x.detach(), x_z.detach(), rec_x.detach(), rec_z.detach()
        return (
            net.d_xz(x, z_x),
            net.d_xz(x_z, z),
            net.d_xx(x, x),
            net.d_xx(x, rec_x),
            net.d_zz(z, z),
            net.d_zz(z, rec_z),
        )

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One discriminator update and one generator/encoder update."""
        self.network.train()
        z = torch.randn(len(batch), self.network.latent_dim, device=batch.device)
        d_total, d_xz, d_xx, d_zz = self.d_loss(*self._logits(batch, z, detach=True))
        self.opt_d.zero_grad()
        d_total.backward()  # type: ignore[no-untyped-call]
        self.opt_d.step()
        ge_total, adversarial, cycle = self.ge_loss(*self._logits(batch, z, detach=False))
        self.opt_ge.zero_grad()
        ge_total.backward()  # type: ignore[no-untyped-call]
        self.opt_ge.step()
        return {
            "d_loss": d_total.item(),
            "d_xz": d_xz.item(),
            "d_xx": d_xx.item(),
            "d_zz": d_zz.item(),
            "ge_loss": ge_total.item(),
            "ge_adversarial": adversarial.item(),
            "ge_cycle": cycle.item(),
        }

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Mean absolute reconstruction error of healthy val images (per pixel)."""
        self.network.eval()
        total = 0.0
        for x in torch.split(x_val_normal, 64):
            total += float((self.network(x) - x).abs().sum())
        return total / max(1, x_val_normal.numel())

    def end_epoch(self, val_loss: float) -> None:
        """Nothing: fixed learning rate."""
