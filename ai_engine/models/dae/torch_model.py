"""The denoising U-Net of Kascenas et al. 2022 as a pure ``nn.Module``, and its coarse noise.

Kascenas, O'Neil and Bhatt, "Denoising autoencoders for unsupervised anomaly detection in brain
MRI", MIDL 2022: a U-Net is trained to remove *coarse* noise from healthy slices (Gaussian noise
drawn at low resolution, e.g. 16x16, upsampled bilinearly to the image and scaled); at
inference it gets the clean image and the anomaly map is its residual. The skip connections
keep fine detail, the coarse noise teaches it to replace blob-sized deviations with healthy
tissue, which is the size of a lesion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ai_engine.models.components.translation import UNetTranslator


def coarse_noise(
    x: torch.Tensor,
    resolution: int = 16,
    std: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian noise drawn at ``resolution`` x ``resolution``, upsampled to ``x``'s size.

    Args:
        x: (B, C, H, W) images (only the shape, dtype and device are used).
        resolution: side of the low-resolution noise grid.
        std: standard deviation of the noise (intensity units of ``x``).
        generator: optional seeded generator (CPU).

    Returns:
        (B, C, H, W) noise on ``x``'s device.

    Raises:
        ValueError: ``resolution`` below 1.
    """
    if resolution < 1:
        raise ValueError(f"noise resolution must be >= 1, got {resolution}")
    b, c, h, w = x.shape
    low = torch.randn(b, c, resolution, resolution, generator=generator, dtype=x.dtype)
    noise = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (std * noise).to(x.device)


class DenoisingUNet(UNetTranslator):
    """(B, 1, H, W) -> denoised (B, 1, H, W).

    The shared U-Net body (`components.translation.UNetTranslator`, 128x128 by default) and a
    1x1 convolution to one channel.
    """

    default_image_size = (128, 128)

    def build_heads(self, width: int) -> None:
        """One 1x1 convolution to the denoised image."""
        self.head = nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The denoised (healthy-looking) version of ``x``."""
        out: torch.Tensor = self.head(self.body(x))
        return out
