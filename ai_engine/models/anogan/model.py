"""`AnomalyModel` adapter of AnoGAN: DCGAN training and the iterative latent search.

Scoring (``card.training["scoring"]``, all optional):

- ``search_steps`` (default 20): Adam iterations on z per image (Schlegl et al. used 500;
  every step back-propagates through G and D, so this is the cost of the model);
- ``search_lr`` (0.05), ``lam`` (0.1), ``search_seed`` (0), ``init_candidates`` (16): z starts
  at the one of ``init_candidates`` seeded N(0, I) draws (the same draws for every image) with
  the lowest loss for that image. The result does not depend on the batch an image is in;
- ``rule``: ``anomaly_score`` (the search loss at the end, the paper's score), ``residual``
  or ``discrimination`` (its two terms), or a reconstruction rule of
  `ai_engine.models.components.reconstruction` on G(z*) (``mse``, ``map_mean``, ``map_top``);
- ``map_sigma`` (2.0): the map is ``|x - G(z*)|`` smoothed with a Gaussian of that sigma (px).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.anogan.loss import DiscriminatorLoss, GeneratorLoss, LatentSearchLoss
from ai_engine.models.anogan.torch_model import DCGAN
from ai_engine.models.base import AnomalyModel, Trainer
from ai_engine.models.components.reconstruction import SCORE_RULES as RECONSTRUCTION_RULES
from ai_engine.models.components.reconstruction import image_scores, smoothed_error
from ai_engine.types import AnomalyOutput, ModelCard

SCORE_RULES = ("anomaly_score", "residual", "discrimination", *RECONSTRUCTION_RULES)


def _as_dcgan(network: nn.Module) -> DCGAN:
    if not isinstance(network, DCGAN):
        raise TypeError(f"expected DCGAN, got {type(network).__name__}")
    return network


class AnoGANModel(AnomalyModel):
    """AnoGAN: score = loss of the latent search that best explains the image by G."""

    model_id: ClassVar[str] = "anogan"
    map_description: ClassVar[str] = (
        "absolute residual |x - G(z*)| after the latent search, Gaussian-smoothed"
    )

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        super().__init__(card, network)
        self.gan = _as_dcgan(network)
        scoring: dict[str, Any] = card.training.get("scoring", {})
        self.score_rule = str(scoring.get("rule", "anomaly_score"))
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"score rule {self.score_rule!r}; valid: {', '.join(SCORE_RULES)}")
        self.search_steps = int(scoring.get("search_steps", 20))
        self.search_lr = float(scoring.get("search_lr", 0.05))
        self.search_seed = int(scoring.get("search_seed", 0))
        self.init_candidates = int(scoring.get("init_candidates", 16))
        self.map_sigma = float(scoring.get("map_sigma", 2.0))
        self.top_fraction = float(scoring.get("top_fraction", 0.05))
        self.loss = LatentSearchLoss(float(scoring.get("lam", 0.1)))

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `DCGAN` for the arguments."""
        return DCGAN(**init_args)

    def _initial_latents(self, x: torch.Tensor, f_x: torch.Tensor) -> torch.Tensor:
        """(B, Z): per image, the seeded candidate with the lowest search loss."""
        generator = torch.Generator().manual_seed(self.search_seed)
        candidates = torch.randn(
            max(1, self.init_candidates), self.gan.latent_dim, generator=generator
        ).to(x.device)
        generated = self.gan.generator(candidates)
        f_generated = self.gan.discriminator.features(generated)
        residual = torch.cdist(x.flatten(1), generated.flatten(1), p=1)  # (B, K)
        discrimination = torch.cdist(f_x, f_generated, p=1)
        loss = (1.0 - self.loss.lam) * residual + self.loss.lam * discrimination
        return candidates[loss.argmin(dim=1)].clone()

    def search(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent search for a (B, 1, H, W) batch.

        Returns:
            G(z*) (B, 1, H, W), residual (B,) and discrimination (B,) losses at z*.
        """
        was_training = self.gan.training
        self.gan.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad():
                x = x.detach().clone().float()
                with torch.no_grad():
                    f_x = self.gan.discriminator.features(x)
                    z0 = self._initial_latents(x, f_x)
                z = z0.requires_grad_(True)
                optimizer = torch.optim.Adam([z], lr=self.search_lr)
                for _ in range(self.search_steps):
                    generated = self.gan.generator(z)
                    f_generated = self.gan.discriminator.features(generated)
                    # Per-image losses summed: each z_i gets only its own image's gradient.
                    total = self.loss(x, generated, f_x, f_generated).sum()
                    (grad,) = torch.autograd.grad(total, [z])
                    optimizer.zero_grad()
                    z.grad = grad
                    optimizer.step()
                with torch.no_grad():
                    generated = self.gan.generator(z)
                    f_generated = self.gan.discriminator.features(generated)
                    residual, discrimination = self.loss.terms(x, generated, f_x, f_generated)
        finally:
            self.gan.train(was_training)
        return generated.detach(), residual.detach(), discrimination.detach()

    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1] (runs the latent search; needs autograd)."""
        x = x.to(self.device).float()
        generated, residual, discrimination = self.search(x)
        with torch.no_grad():
            x = x.detach().clone()
            anomaly_map = smoothed_error(x, generated, self.map_sigma)
        if self.score_rule == "residual":
            score = residual
        elif self.score_rule == "discrimination":
            score = discrimination
        elif self.score_rule == "anomaly_score":
            score = (1.0 - self.loss.lam) * residual + self.loss.lam * discrimination
        else:
            score = image_scores(x, generated, anomaly_map, self.score_rule, self.top_fraction)
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=generated)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """DCGAN training with one Adam optimiser for G and one for D."""
        return AnoGANTrainer(_as_dcgan(network), optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """``anomaly_score`` (the paper's), its two terms, and the reconstruction rules."""
        return SCORE_RULES


class AnoGANTrainer:
    """Alternating DCGAN updates: one D step, then one G step per batch.

    ``optim`` keys: ``lr`` (2e-4), ``beta1`` (0.5), ``val_samples`` (256).

    Validation loss (label-free, lower is better): for each healthy validation image, the mean
    absolute difference to the closest of ``val_samples`` fixed generated images, averaged;
    it says how well G's samples cover healthy images (no latent search, so it is cheap).
    """

    def __init__(self, network: DCGAN, optim: dict[str, Any]) -> None:
        self.network = network
        lr = float(optim.get("lr", 2e-4))
        betas = (float(optim.get("beta1", 0.5)), 0.999)
        self.opt_g = torch.optim.Adam(network.generator.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(network.discriminator.parameters(), lr=lr, betas=betas)
        self.d_loss = DiscriminatorLoss()
        self.g_loss = GeneratorLoss()
        generator = torch.Generator().manual_seed(int(optim.get("val_seed", 0)))
        self.val_z = torch.randn(int(optim.get("val_samples", 256)), network.latent_dim,
                                 generator=generator)  # fmt: skip

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One D update and one G update on a (B, 1, H, W) batch of normal images."""
        self.network.train()
        z = torch.randn(len(batch), self.network.latent_dim, device=batch.device)
        fake = self.network.generator(z)
        d_loss = self.d_loss(
            self.network.discriminator(batch), self.network.discriminator(fake.detach())
        )
        self.opt_d.zero_grad()
        d_loss.backward()  # type: ignore[no-untyped-call]
        self.opt_d.step()
        g_loss = self.g_loss(self.network.discriminator(fake))
        self.opt_g.zero_grad()
        g_loss.backward()  # type: ignore[no-untyped-call]
        self.opt_g.step()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Mean L1 distance (per pixel) of healthy val images to their nearest G sample."""
        self.network.eval()
        samples = self.network.generator(self.val_z.to(x_val_normal.device)).flatten(1)
        total = 0.0
        for start in range(0, len(x_val_normal), 32):
            x = x_val_normal[start : start + 32].flatten(1)
            total += float(torch.cdist(x, samples, p=1).min(dim=1).values.sum())
        return total / max(1, x_val_normal.numel())

    def end_epoch(self, val_loss: float) -> None:
        """Nothing: fixed learning rate, as in DCGAN."""
