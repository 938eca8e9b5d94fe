"""`AnomalyModel` adapter of the reversed autoencoder (RA, seed 002) and its introspective trainer.

Anomaly map: ``|CLAHE(x) - CLAHE(x_ph)| * perceptual(x, x_ph)``, Gaussian-smoothed, where
``x_ph`` is the pseudo-healthy reconstruction (decoder of the latent mean), CLAHE is the
adaptive histogram equalisation of `loss.clahe` and the perceptual difference compares the
model's *own* encoder features (no pretrained VGG/LPIPS offline). The product of the two is our
choice of combination (the seed names both terms but not how they are combined).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from monai.networks.layers import GaussianFilter
from torch import nn

from ai_engine.models.base import Trainer
from ai_engine.models.components.reconstruction import (
    SCORE_RULES,
    ReconstructionModel,
    image_scores,
    reconstruction_mse,
)
from ai_engine.models.reversed_ae.loss import (
    clahe,
    kl_divergence,
    perceptual_map,
    reconstruction_error,
    reversed_embedding_loss,
)
from ai_engine.models.reversed_ae.torch_model import ReversedAutoEncoder
from ai_engine.types import AnomalyOutput, ModelCard


class ReversedAEModel(ReconstructionModel):
    """Reversed autoencoder; ``scoring`` may add ``clahe_tiles`` (4) and ``clahe_clip`` (2.0)."""

    model_id: ClassVar[str] = "reversed_ae"
    map_description: ClassVar[str] = (
        "|CLAHE(x) - CLAHE(pseudo-healthy)| x own-encoder perceptual difference, Gaussian-smoothed"
    )

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        super().__init__(card, network)
        scoring: dict[str, Any] = card.training.get("scoring", {})
        self.clahe_tiles = int(scoring.get("clahe_tiles", 4))
        self.clahe_clip = float(scoring.get("clahe_clip", 2.0))

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `ConvVAE` for the arguments."""
        return ReversedAutoEncoder(**init_args)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1] (see the module docstring for the map)."""
        net = self.network
        if not isinstance(net, ReversedAutoEncoder):
            raise TypeError(f"expected ReversedAutoEncoder, got {type(net).__name__}")
        x = x.to(self.device).float()
        pseudo_healthy = net(x).float()
        l1 = (clahe(x, self.clahe_tiles, self.clahe_clip) - clahe(
            pseudo_healthy, self.clahe_tiles, self.clahe_clip
        )).abs()  # fmt: skip
        perceptual = perceptual_map(
            net.features(x), net.features(pseudo_healthy), (x.shape[2], x.shape[3])
        )
        anomaly_map = l1 * perceptual
        if self.map_sigma > 0:
            smoother = GaussianFilter(spatial_dims=2, sigma=self.map_sigma).to(x.device)
            anomaly_map = torch.as_tensor(smoother(anomaly_map))
        score = image_scores(x, pseudo_healthy, anomaly_map, self.score_rule, self.top_fraction)
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=pseudo_healthy)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """Introspective encoder/decoder training (see `IntrospectiveTrainer`)."""
        if not isinstance(network, ReversedAutoEncoder):
            raise TypeError(f"expected ReversedAutoEncoder, got {type(network).__name__}")
        return IntrospectiveTrainer(network, optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """The shared reconstruction score rules, applied to this model's map."""
        return SCORE_RULES


class IntrospectiveTrainer:
    """IntroVAE-style adversarial VAE training with the multi-scale reversed embedding loss.

    Encoder step: ``rec(x, x_r) + beta KL(x) + alpha ([m - KL(E(x_r))]+ + [m - KL(E(x_p))]+)``
    (ELBO on real images; reconstructions ``x_r`` and samples ``x_p = D(z ~ N(0, I))`` pushed
    above the KL margin ``m``: the encoder is the critic). Decoder step: ``rec(x, x_r) +
    alpha (KL(E(x_r)) + KL(E(x_p))) + lambda_rev * reversed_embedding_loss`` (the decoder
    fools the encoder and its reconstructions must embed like their inputs at every scale).

    ``optim`` keys: ``lr`` (2e-4), ``beta_kl`` (1), ``alpha_adv`` (0.25), ``kl_margin`` (20),
    ``lambda_rev`` (1).
    """

    def __init__(self, network: ReversedAutoEncoder, optim: dict[str, Any]) -> None:
        self.network = network
        lr = float(optim.get("lr", 2e-4))
        self.opt_e = torch.optim.Adam(network.encoder_parameters(), lr=lr)
        self.opt_d = torch.optim.Adam(network.decoder_parameters(), lr=lr)
        self.beta_kl = float(optim.get("beta_kl", 1.0))
        self.alpha = float(optim.get("alpha_adv", 0.25))
        self.margin = float(optim.get("kl_margin", 20.0))
        self.lambda_rev = float(optim.get("lambda_rev", 1.0))

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One encoder step, then one decoder step, on a (B, 1, H, W) normal batch."""
        net = self.network
        net.train()
        n_pixels = batch[0].numel()
        mu, logvar = net.encode(batch)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        z_prior = torch.randn_like(mu)
        with torch.no_grad():
            x_r, x_p = net.body.decode(z), net.body.decode(z_prior)
        kl_real = kl_divergence(mu, logvar)
        kl_r = kl_divergence(*net.encode(x_r))
        kl_p = kl_divergence(*net.encode(x_p))
        rec = reconstruction_error(batch, net.body.decode(z))
        hinge = torch.relu(self.margin - kl_r) + torch.relu(self.margin - kl_p)
        loss_e = (rec + self.beta_kl * kl_real + self.alpha * hinge).mean() / n_pixels
        self.opt_e.zero_grad()
        self.opt_d.zero_grad()
        loss_e.backward()  # type: ignore[no-untyped-call]
        self.opt_e.step()

        for p in net.encoder_parameters():
            p.requires_grad_(False)
        x_r = net.body.decode(z.detach())
        x_p = net.body.decode(z_prior)
        kl_r = kl_divergence(*net.encode(x_r))
        kl_p = kl_divergence(*net.encode(x_p))
        rec = reconstruction_error(batch, x_r)
        reversed_loss = reversed_embedding_loss(net.features(batch), net.features(x_r))
        loss_d = (rec + self.alpha * (kl_r + kl_p)).mean() / n_pixels
        loss_d = loss_d + self.lambda_rev * reversed_loss
        self.opt_d.zero_grad()
        loss_d.backward()  # type: ignore[no-untyped-call]
        self.opt_d.step()
        for p in net.encoder_parameters():
            p.requires_grad_(True)
        return {
            "encoder": loss_e.item(),
            "decoder": loss_d.item(),
            "rec_mse": (rec.mean() / n_pixels).item(),
            "kl_real": kl_real.mean().item(),
            "kl_fake": kl_p.mean().item(),
            "reversed": reversed_loss.item(),
        }

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Mean squared error of the mean reconstruction of healthy val images."""
        return reconstruction_mse(self.network, x_val_normal)

    def end_epoch(self, val_loss: float) -> None:
        """Fixed learning rate."""
        del val_loss
