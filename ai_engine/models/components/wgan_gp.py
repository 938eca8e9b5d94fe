"""Shared parts of the semi-supervised image-to-image GANs (Brainomaly, SAGAN, HealthyGAN).

- `PatchDiscriminator`: a PatchGAN critic (no batch norm, as WGAN-GP needs per-sample gradients).
- `gradient_penalty`: the WGAN-GP term on random interpolates of real and generated images.
- `SemiSupervisedGanTrainer`: the training loop they share. Each ``step`` receives a batch of
  *known-normal* images (H); the unlabelled mix (M: normal and abnormal, labels withheld) comes
  once through ``set_unlabelled``. The critic sees normal images as real and generated healthy
  images of M as fake; subclasses give the generator's loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ai_engine.models.base import module_device
from ai_engine.models.components.reconstruction import per_pixel_val_loss


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: strided 4x4 convolutions, one unbounded score per receptive-field patch.

    Args:
        in_channels: image channels (plus any position-code channels).
        channels: output channels of the strided layers (each halves H and W).
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c_out in enumerate(channels):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1))
            if i > 0:
                layers.append(nn.InstanceNorm2d(c_out, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, kernel_size=3, stride=1, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch scores (B, 1, H / 2**n, W / 2**n)."""
        out: torch.Tensor = self.body(x)
        return out


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: E[(||grad critic(x_hat)||_2 - 1)^2] on random interpolates x_hat (scalar)."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    penalty: torch.Tensor = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
    return penalty


class SemiSupervisedGanTrainer(ABC):
    """WGAN-GP training of a healthy-image generator on normal (H) and unlabelled (M) images.

    ``optim`` keys: ``lr`` (1e-4), ``betas`` ([0.5, 0.999]), ``n_critic`` (critic steps per
    generator step), ``lambda_gp`` (10). Without ``set_unlabelled`` (normal-only use) M is
    the normal batch itself.
    """

    n_critic_default = 1

    def __init__(self, generator: nn.Module, critic: nn.Module, optim: dict[str, Any]) -> None:
        self.generator = generator
        # the critic is built by make_trainer, outside the network: it trains where G is
        self.critic = critic.to(module_device(generator))
        lr = float(optim.get("lr", 1e-4))
        betas_cfg = optim.get("betas", (0.5, 0.999))
        betas = (float(betas_cfg[0]), float(betas_cfg[1]))
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
        self.n_critic = int(optim.get("n_critic", self.n_critic_default))
        self.lambda_gp = float(optim.get("lambda_gp", 10.0))
        self.unlabelled: torch.Tensor | None = None

    def set_unlabelled(self, x: torch.Tensor) -> None:
        """Keep the unlabelled mix M, (N, 1, H, W); batches of it are drawn at random."""
        self.unlabelled = x

    def _mix_batch(self, like: torch.Tensor) -> torch.Tensor:
        if self.unlabelled is None or not len(self.unlabelled):
            return like
        idx = torch.randint(0, len(self.unlabelled), (len(like),))
        return self.unlabelled[idx].to(like.device)

    def healthy(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's healthy version of (B, 1, H, W) images (what the critic judges)."""
        out: torch.Tensor = self.generator(x)
        return out

    def critic_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the critic sees of an image batch (default: the image)."""
        return x

    @abstractmethod
    def generator_loss(
        self, x_normal: torch.Tensor, x_mix: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator's total loss and its named terms."""

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """``n_critic`` critic steps (fresh M batches each), then one generator step."""
        self.generator.train()
        self.critic.train()
        d_loss = torch.zeros(())
        gp = torch.zeros(())
        for _ in range(self.n_critic):
            x_mix = self._mix_batch(batch)
            with torch.no_grad():
                fake = self.healthy(x_mix)
            real_in, fake_in = self.critic_input(batch), self.critic_input(fake)
            gp = gradient_penalty(self.critic, real_in, fake_in)
            d_loss = self.critic(fake_in).mean() - self.critic(real_in).mean()
            self.opt_d.zero_grad()
            (d_loss + self.lambda_gp * gp).backward()  # type: ignore[no-untyped-call]
            self.opt_d.step()
        for p in self.critic.parameters():
            p.requires_grad_(False)
        g_loss, terms = self.generator_loss(batch, self._mix_batch(batch))
        self.opt_g.zero_grad()
        g_loss.backward()  # type: ignore[no-untyped-call]
        self.opt_g.step()
        for p in self.critic.parameters():
            p.requires_grad_(True)
        return {"d_wasserstein": d_loss.item(), "d_gp": gp.item(), "g": g_loss.item(), **terms}

    @torch.no_grad()
    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Mean |healthy(x) - x| of healthy val images (identity error; label-free)."""
        self.generator.eval()
        return per_pixel_val_loss(x_val_normal, lambda x: float((self.healthy(x) - x).abs().sum()))

    def end_epoch(self, val_loss: float) -> None:
        """No schedule (fixed learning rate, as in the papers)."""
        del val_loss
