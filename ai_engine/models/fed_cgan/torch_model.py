"""Networks of the federated conditional GAN (seed 000) as pure ``nn.Module``s.

- `ConditionalUNetGenerator` G(PD, CD, z): a linear projection of [z, attributes] gives a
  coarse (S, H/8, W/8) seed map that is upsampled to (H, W); the attributes are also broadcast
  as constant channels; a MONAI ``UNet`` with residual units (``num_res_units``) turns these
  channels into a (1, H, W) image in [0, 1].
- `AuxDiscriminator` D(image): strided MONAI convolutions (GroupNorm, LeakyReLU, both
  supported by Opacus' per-sample gradients) and two linear heads: the real/fake logit and an
  auxiliary head that predicts the attribute vector back from the image (used by the
  conditional loss). D sees the image only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from ai_engine.models.components.dcgan import down_convs


class ConditionalUNetGenerator(nn.Module):
    """G(attributes, z) -> image.

    Args:
        image_size: side of the square output; divisible by 2 ** len(channels).
        cond_dim: length A of the attribute vector (demographics + clinical data).
        noise_dim: length of the Gaussian noise vector z.
        channels: U-Net channels per level.
        seed_channels: channels S of the projected seed map.
        num_res_units: residual units per U-Net level (0: plain convolutions).
    """

    def __init__(
        self,
        image_size: int = 64,
        cond_dim: int = 2,
        noise_dim: int = 64,
        channels: Sequence[int] = (16, 32, 64),
        seed_channels: int = 8,
        num_res_units: int = 1,
    ) -> None:
        super().__init__()
        if image_size % 8 or image_size % (2 ** len(channels)):
            raise ValueError(f"image_size {image_size} must be divisible by 8 and 2**levels")
        self.image_size = int(image_size)
        self.cond_dim = int(cond_dim)
        self.noise_dim = int(noise_dim)
        self.seed_channels = int(seed_channels)
        self.seed_side = self.image_size // 8
        self.project = nn.Linear(
            self.noise_dim + self.cond_dim, self.seed_channels * self.seed_side**2
        )
        self.unet = UNet(
            spatial_dims=2,
            in_channels=self.seed_channels + self.cond_dim,
            out_channels=1,
            channels=tuple(int(c) for c in channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=int(num_res_units),
            norm="BATCH",
            act=("LEAKYRELU", {"negative_slope": 0.2}),
        )

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """(B, noise_dim) noise and (B, A) attributes -> (B, 1, H, W) images in [0, 1]."""
        batch = z.shape[0]
        seed = self.project(torch.cat([z, cond], dim=1))
        seed = seed.view(batch, self.seed_channels, self.seed_side, self.seed_side)
        seed = F.interpolate(seed, size=(self.image_size, self.image_size), mode="bilinear")
        cond_map = cond[:, :, None, None].expand(batch, self.cond_dim, *seed.shape[2:])
        out: torch.Tensor = self.unet(torch.cat([seed, cond_map], dim=1))
        return torch.sigmoid(out)


class AuxDiscriminator(nn.Module):
    """D(image) -> (real/fake logit (B,), predicted attributes (B, A)).

    Args:
        image_size: side of the square input; divisible by 2 ** len(channels).
        cond_dim: length A of the attribute vector the auxiliary head predicts.
        channels: output channels of the strided convolutions (each halves H and W).
        groups: GroupNorm groups (must divide every entry of ``channels``).
    """

    def __init__(
        self,
        image_size: int = 64,
        cond_dim: int = 2,
        channels: Sequence[int] = (16, 32, 64, 64),
        groups: int = 4,
    ) -> None:
        super().__init__()
        side = int(image_size) // 2 ** len(channels)
        if side < 1 or int(image_size) % 2 ** len(channels):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{len(channels)}")
        # GroupNorm on every layer (no batch statistics: per-sample gradients under DP-SGD)
        layers = down_convs(
            1, channels, norm=("GROUP", {"num_groups": groups}), norm_first=True, bias=True
        )
        self.features = nn.Sequential(*layers)
        n_features = int(channels[-1]) * side * side
        self.adv_head = nn.Linear(n_features, 1)
        self.aux_head = nn.Linear(n_features, int(cond_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) -> logits (B,), attributes (B, A)."""
        h = self.features(x).flatten(1)
        return self.adv_head(h).squeeze(1), self.aux_head(h)
