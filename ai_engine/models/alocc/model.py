"""`AnomalyModel` adapter and trainer of ALOCC.

Image score rules (anomaly = 1 - D output, computed as sigmoid(-logit) so that saturated
outputs keep their order): ``d_rx`` = 1 - D(R(X)) (OCC2, the paper's better one) and ``d_x`` =
1 - D(X) (OCC1). ``training fit`` picks one on val AUROC. Anomaly map: |X - R(X)|
Gaussian-smoothed (not part of the paper's decision).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.alocc.loss import DiscriminatorLoss, GeneratorLoss
from ai_engine.models.alocc.torch_model import Alocc
from ai_engine.models.base import AnomalyModel, Trainer
from ai_engine.models.components.reconstruction import reconstruction_mse, smoothed_error
from ai_engine.types import AnomalyOutput, ModelCard

SCORE_RULES = ("d_rx", "d_x")


def _as_alocc(network: nn.Module) -> Alocc:
    if not isinstance(network, Alocc):
        raise TypeError(f"expected Alocc, got {type(network).__name__}")
    return network


class AloccModel(AnomalyModel):
    """ALOCC scored by its discriminator, on R(X) (OCC2) or on X (OCC1)."""

    model_id: ClassVar[str] = "alocc"
    map_description: ClassVar[str] = (
        "absolute error between X and the reconstructor's output R(X), Gaussian-smoothed "
        "(the image score is 1 - D, not this map)"
    )

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        super().__init__(card, _as_alocc(network))
        scoring: dict[str, Any] = card.training.get("scoring", {})
        self.score_rule = str(scoring.get("rule", "d_rx"))
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"unknown score rule {self.score_rule!r}; valid: {SCORE_RULES}")
        self.map_sigma = float(scoring.get("map_sigma", 2.0))

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `Alocc` for the arguments."""
        return Alocc(**init_args)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1]."""
        net = _as_alocc(self.network)
        x = x.to(self.device).float()
        reconstruction = net(x).float()
        judged = reconstruction if self.score_rule == "d_rx" else x
        score = torch.sigmoid(-net.discriminate(judged).float())
        anomaly_map = smoothed_error(x, reconstruction, self.map_sigma)
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=reconstruction)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """Two Adam optimisers (R, D); see `AloccTrainer`."""
        return AloccTrainer(_as_alocc(network), optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """``d_rx`` (OCC2) and ``d_x`` (OCC1)."""
        return SCORE_RULES


class AloccTrainer:
    """Alternating D and R updates on noisy inputs X~ = X + N(0, sigma^2).

    ``optim`` keys: ``lr`` (2e-4), ``beta1`` (0.5), ``lam`` (lambda, 0.4), ``noise_sigma``
    (sigma, 0.05 on [0, 1] images). Validation loss (label-free, healthy val): mean
    ||X - R(X)||², the quantity of the paper's stopping rule.
    """

    def __init__(self, network: Alocc, optim: dict[str, Any]) -> None:
        self.network = network
        lr = float(optim.get("lr", 2e-4))
        betas = (float(optim.get("beta1", 0.5)), 0.999)
        self.opt_r = torch.optim.Adam(network.reconstructor.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(network.discriminator.parameters(), lr=lr, betas=betas)
        self.sigma = float(optim.get("noise_sigma", 0.05))
        self.r_loss = GeneratorLoss(float(optim.get("lam", 0.4)))
        self.d_loss = DiscriminatorLoss()

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One D update, then one R update, on a (B, 1, H, W) batch."""
        net = self.network
        net.train()
        noisy = batch + self.sigma * torch.randn_like(batch)
        reconstruction = net(noisy)
        d_total = self.d_loss(net.discriminate(batch), net.discriminate(reconstruction.detach()))
        self.opt_d.zero_grad()
        d_total.backward()  # type: ignore[no-untyped-call]
        self.opt_d.step()

        r_total, terms = self.r_loss(batch, reconstruction, net.discriminate(reconstruction))
        self.opt_r.zero_grad()
        r_total.backward()  # type: ignore[no-untyped-call]
        self.opt_r.step()
        return {"r_loss": r_total.item(), **terms, "d_loss": d_total.item()}

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Mean squared reconstruction error ||X - R(X)||² of healthy val images."""
        return reconstruction_mse(self.network, x_val_normal)

    def end_epoch(self, val_loss: float) -> None:
        """No learning-rate schedule."""
