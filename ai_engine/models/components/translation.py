"""The image-to-image body of the translation GANs (Brainomaly, HealthyGAN).

Both generators are a MONAI UNet with instance norm (four stride-2 levels) followed by 1x1
heads that start at zero, so that an untrained generator returns its input (a normal image
needs no change), which matters for short CPU budgets.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNet
from torch import nn


def unet_body(
    image_size: Sequence[int], channels: Sequence[int], latent_dim: int, num_res_units: int
) -> UNet:
    """UNet (B, 1, H, W) -> (B, channels[0], H, W).

    Args:
        image_size: (H, W); both divisible by 16 (four stride-2 levels).
        channels: channels of the four encoder levels.
        latent_dim: channels of the bottleneck level.
        num_res_units: residual units per level.

    Raises:
        ValueError: ``channels`` does not have 4 entries or a side is not divisible by 16.
    """
    if len(channels) != 4:
        raise ValueError(f"channels must have 4 entries, got {list(channels)}")
    if int(image_size[0]) % 16 or int(image_size[1]) % 16:
        raise ValueError(f"image_size must be divisible by 16, got {list(image_size)}")
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=int(channels[0]),
        channels=(*[int(c) for c in channels], int(latent_dim)),
        strides=(2, 2, 2, 2),
        num_res_units=num_res_units,
        norm="INSTANCE",
    )


def zero_head(width: int, bias: float = 0.0) -> nn.Conv2d:
    """A 1x1 convolution to one channel with zero weights and the given bias."""
    head = nn.Conv2d(width, 1, kernel_size=1)
    nn.init.zeros_(head.weight)
    if head.bias is not None:
        nn.init.constant_(head.bias, bias)
    return head
