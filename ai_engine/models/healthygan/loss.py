"""HealthyGAN's generator loss (seed 003, eqs. 2.9-2.14); critic: components/wgan_gp.py."""

from __future__ import annotations

import torch
from torch import nn


def focus_loss(mask: torch.Tensor, lambda_fs: float, lambda_fz: float) -> torch.Tensor:
    """``lambda_fs * mean(M)^2 + lambda_fz * mean(0.5 - |M - 0.5|)`` (scalar).

    The first term keeps the mask small. The seed writes the second as ``mean|M - 0.5|``
    while saying it drives M to binary values; minimising it literally would pull M to 0.5,
    so we minimise the distance to the nearer of 0 and 1 (the stated intent).
    """
    size = mask.flatten(1).mean(1) ** 2
    binary = (0.5 - (mask - 0.5).abs()).flatten(1).mean(1)
    return (lambda_fs * size + lambda_fz * binary).mean()


class GeneratorLoss(nn.Module):
    """``L_adv + lambda_rec L_rec + lambda_id L_id + lambda_f L_focus`` (eq. 2.14).

    - ``L_adv = -mean D(B)`` over mixed (A) and known-healthy inputs (eq. 2.9, our sign: the
      critic scores real high);
    - ``L_id = |B_int(x) - x|_1`` on known-healthy images (eq. 2.10);
    - ``L_rec = |A - (A * M + B_int * (1 - M))|_1`` on the mix: outside the mask the
      intermediate image must reproduce the input (eqs. 2.7, 2.11);
    - ``L_focus`` on all masks (eq. 2.12, see `focus_loss`).
    """

    def __init__(
        self,
        lambda_rec: float = 10.0,
        lambda_id: float = 10.0,
        lambda_focus: float = 1.0,
        lambda_fs: float = 1.0,
        lambda_fz: float = 0.1,
    ) -> None:
        super().__init__()
        self.lambda_rec = lambda_rec
        self.lambda_id = lambda_id
        self.lambda_focus = lambda_focus
        self.lambda_fs = lambda_fs
        self.lambda_fz = lambda_fz

    def forward(
        self,
        critic_outputs: torch.Tensor,
        x_mix: torch.Tensor,
        b_int_mix: torch.Tensor,
        mask_mix: torch.Tensor,
        x_normal: torch.Tensor,
        b_int_normal: torch.Tensor,
        mask_normal: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the total and the named terms (scalars)."""
        adversarial = -critic_outputs.mean()
        identity = (b_int_normal - x_normal).abs().mean()
        rebuilt = x_mix * mask_mix + b_int_mix * (1 - mask_mix)
        reconstruction = (x_mix - rebuilt).abs().mean()
        focus = focus_loss(torch.cat([mask_mix, mask_normal]), self.lambda_fs, self.lambda_fz)
        total = (
            adversarial
            + self.lambda_rec * reconstruction
            + self.lambda_id * identity
            + self.lambda_focus * focus
        )
        return total, {
            "g_adv": adversarial,
            "g_identity": identity,
            "g_rec": reconstruction,
            "g_focus": focus,
        }
