"""HealthyGAN's generator as a pure ``nn.Module``: an intermediate healthy image and a mask.

``B = B_int * M + A * (1 - M)`` (eq. 2.6): the mask M in [0, 1] says where the input A is
replaced by the generated content B_int. B_int is built as ``clamp(x + tanh(head), 0, 1)``
with a zero-initialised head, and the mask logits start at -3 (M about 0.05), so an untrained
generator returns its input and B_int starts at the identity the identity loss asks for. (A
sigmoid head for B_int starts at 0.5 everywhere and did not approach the dark background
within the CPU budget: identity L1 0.34-0.38 after 2 epochs. The seed does not say how B_int
is produced.)
"""

from __future__ import annotations

import torch
from torch import nn

from ai_engine.models.components.translation import UNetTranslator, zero_head


class MaskedGenerator(UNetTranslator):
    """The shared U-Net body (`translation.UNetTranslator`) with two heads: B_int and mask M."""

    def build_heads(self, width: int) -> None:
        """Zero-initialised heads; the mask's bias -3 starts it near 0 (change nothing)."""
        self.act = nn.LeakyReLU(0.2)
        self.image_head = zero_head(width)
        self.mask_head = zero_head(width, bias=-3.0)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) -> intermediate image B_int and mask M, each (B, 1, H, W) in [0, 1]."""
        h = self.act(self.body(x))
        b_int = (x + torch.tanh(self.image_head(h))).clamp(0.0, 1.0)
        return b_int, torch.sigmoid(self.mask_head(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Healthy version ``B_int * M + x * (1 - M)`` of (B, 1, H, W) images."""
        b_int, mask = self.parts(x)
        return x + mask * (b_int - x)  # = B_int * M + x * (1 - M), exact where B_int == x
