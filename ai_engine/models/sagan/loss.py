"""SAGAN's generator loss (seed 003, eqs. 2.23-2.26) and its pseudo-anomaly synthesis.

The critic's WGAN-GP loss (eq. 2.27) is the shared one of models/components/wgan_gp.py.
"""

from __future__ import annotations

import torch
from torch import nn


def synthesise_anomalies(x: torch.Tensor, max_blobs: int = 3) -> torch.Tensor:
    """Pseudo-anomalous copies of normal images (B, 1, H, W), drawn with the global RNG.

    Each image gets 1..``max_blobs`` soft-edged ellipses (radii H/16..H/4) whose content is
    one of: a brightness shift of +-0.2..0.5, the same place of another image of the batch
    (CutPaste-like), or uniform noise. The seed says only "synthetically generated from normal
    images"; this recipe is ours.
    """
    b, _, h, w = x.shape
    out = x.clone()
    ys = torch.arange(h, dtype=x.dtype, device=x.device)[:, None]
    xs = torch.arange(w, dtype=x.dtype, device=x.device)[None, :]
    donors = x[torch.roll(torch.arange(b), 1)]
    for i in range(b):
        n_blobs = int(torch.randint(1, max_blobs + 1, (1,)))
        for _ in range(n_blobs):
            cy, cx = float(torch.rand(1)) * h, float(torch.rand(1)) * w
            ry = h / 16 + float(torch.rand(1)) * (h / 4 - h / 16)
            rx = w / 16 + float(torch.rand(1)) * (w / 4 - w / 16)
            d = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2
            mask = ((1.0 - d) / 0.3).clamp(0.0, 1.0)  # soft edge
            kind = int(torch.randint(0, 3, (1,)))
            if kind == 0:
                sign = 1.0 if float(torch.rand(1)) < 0.5 else -1.0
                content = out[i, 0] + sign * (0.2 + 0.3 * float(torch.rand(1)))
            elif kind == 1:
                content = donors[i, 0]
            else:
                content = torch.rand(h, w, dtype=x.dtype, device=x.device)
            out[i, 0] = out[i, 0] * (1 - mask) + content.clamp(0, 1) * mask
    return out


class GeneratorLoss(nn.Module):
    """``-E[D(x'_u)] + lambda_id |x'_n - x_n|_1 + lambda_rec ||x'_p - x_n||_2^2`` (eq. 2.26).

    Args:
        lambda_id: weight of the identity loss on normal images (eq. 2.23).
        lambda_rec: weight of the restoration loss on pseudo-anomalies (eq. 2.24, mean square).
    """

    def __init__(self, lambda_id: float = 10.0, lambda_rec: float = 10.0) -> None:
        super().__init__()
        self.lambda_id = lambda_id
        self.lambda_rec = lambda_rec

    def forward(
        self,
        critic_unlabelled: torch.Tensor,
        restored_normal: torch.Tensor,
        restored_pseudo: torch.Tensor,
        x_normal: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (total, adversarial, identity, reconstruction) scalars."""
        adversarial = -critic_unlabelled.mean()
        identity = (restored_normal - x_normal).abs().mean()
        reconstruction = ((restored_pseudo - x_normal) ** 2).mean()
        total = adversarial + self.lambda_id * identity + self.lambda_rec * reconstruction
        return total, adversarial, identity, reconstruction
