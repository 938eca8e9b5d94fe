"""DCGAN-style networks shared by the adversarial models (AnoGAN, f-AnoGAN, ALAD, GANomaly, ALOCC).

- `down_convs` / `up_convs`: the strided 4x4 convolution stacks every one of them is made of
  (each layer halves / doubles H and W).
- `ConvEncoder`: 4 strided 4x4 convolutions (H, W halve each time; LeakyReLU 0.2, normalisation
  on all but the first), then a linear head. Used as discriminator / critic / encoder; its
  ``features`` (the flattened last feature map) are the "intermediate layer" the anomaly
  scores of AnoGAN, f-AnoGAN and ALAD compare.
- `ConvGenerator`: linear projection of a latent vector to (C4, H/16, W/16), 4 transposed 4x4
  convolutions (BatchNorm + ReLU), sigmoid output in [0, 1] like the model input.
- `DCEncoder` / `DCDecoder`: GANomaly's layout (Akcay et al. 2018): any number of strided
  layers, then a "valid" convolution over the remaining grid to a 1x1 vector, and its mirror.

Layers are MONAI ``Convolution`` blocks; spectral normalisation (ALAD) wraps every conv and
linear layer with ``torch.nn.utils.parametrizations.spectral_norm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

NORMS = ("batch", "instance", "none")
#: LeakyReLU of the DCGAN discriminators and encoders.
LEAKY = ("LEAKYRELU", {"negative_slope": 0.2})


def down_convs(
    in_channels: int,
    channels: Sequence[int],
    norm: str | tuple[str, dict[str, Any]] | None = "BATCH",
    norm_first: bool = False,
    bias: bool | None = None,
) -> list[nn.Module]:
    """Strided 4x4 convolutions with LeakyReLU 0.2, one per entry of ``channels``.

    Args:
        in_channels: channels of the input.
        channels: output channels of each layer (each halves H and W).
        norm: MONAI norm (a name, or a (name, arguments) pair) of every layer after the
            first, or None.
        norm_first: normalise the first layer too (DCGAN discriminators do not).
        bias: whether each convolution has a bias; default: only layers without a norm.
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c_out in enumerate(channels):
        layer_norm = norm if (i > 0 or norm_first) else None
        layers.append(
            Convolution(
                2,
                c_in,
                int(c_out),
                strides=2,
                kernel_size=4,
                padding=1,
                act=LEAKY,
                norm=layer_norm,
                bias=layer_norm is None if bias is None else bias,
            )
        )
        c_in = int(c_out)
    return layers


def up_convs(in_channels: int, channels: Sequence[int]) -> list[nn.Module]:
    """Transposed strided 4x4 convolutions (BatchNorm + ReLU); the last is a plain convolution.

    Args:
        in_channels: channels of the input feature map.
        channels: output channels of each layer (each doubles H and W); the last is the image's.
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c_out in enumerate(channels):
        last = i == len(channels) - 1
        layers.append(
            Convolution(
                2,
                c_in,
                int(c_out),
                strides=2,
                kernel_size=4,
                padding=1,
                output_padding=0,
                is_transposed=True,
                act=None if last else "RELU",
                norm=None if last else "BATCH",
                conv_only=last,
                bias=last,
            )
        )
        c_in = int(c_out)
    return layers


def grid_shape(image_size: Sequence[int], channels: Sequence[int]) -> tuple[int, int, int]:
    """(C4, H/16, W/16): the feature map after 4 stride-2 layers.

    Raises:
        ValueError: ``channels`` does not have 4 entries or a side is not divisible by 16.
    """
    if len(channels) != 4:
        raise ValueError(f"channels must have 4 entries, got {list(channels)}")
    height, width = int(image_size[0]), int(image_size[1])
    if height % 16 or width % 16:
        raise ValueError(f"image_size must be divisible by 16, got {height}x{width}")
    return int(channels[-1]), height // 16, width // 16


def _monai_norm(norm: str) -> str | None:
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r}: valid are {', '.join(NORMS)}")
    return None if norm == "none" else norm.upper()


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalise every Conv2d/ConvTranspose2d/Linear weight of ``module`` in place."""
    for child in list(module.modules()):
        if isinstance(child, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            spectral_norm(child)
    return module


class ConvEncoder(nn.Module):
    """(B, C_in, H, W) -> (B, out_dim), with the flattened last feature map as ``features``.

    Args:
        image_size: (H, W), both divisible by 16.
        channels: output channels of the 4 conv layers.
        out_dim: size of the linear head (1 for a discriminator, the latent size for an encoder).
        in_channels: input channels (2 for ALAD's D_xx, which sees an image pair).
        norm: ``batch``, ``instance`` or ``none`` (a WGAN-GP critic must not use ``batch``).
        dropout: dropout before the head (ALAD's discriminators).
        spectral: spectral-normalise all weights.
    """

    def __init__(
        self,
        image_size: Sequence[int],
        channels: Sequence[int],
        out_dim: int,
        in_channels: int = 1,
        norm: str = "batch",
        dropout: float = 0.0,
        spectral: bool = False,
    ) -> None:
        super().__init__()
        c4, h4, w4 = grid_shape(image_size, channels)
        layers = down_convs(in_channels, channels, _monai_norm(norm))
        self.convs = nn.Sequential(*layers)
        self.n_features = c4 * h4 * w4
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.n_features, out_dim)
        if spectral:
            apply_spectral_norm(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, n_features), the flattened last feature map."""
        out: torch.Tensor = self.convs(x).flatten(1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, out_dim)."""
        out: torch.Tensor = self.head(self.dropout(self.features(x)))
        return out


class ConvGenerator(nn.Module):
    """(B, latent_dim) -> (B, 1, H, W) in [0, 1].

    Args:
        image_size: (H, W), both divisible by 16.
        channels: the encoder's 4 channel counts; the generator mirrors them.
        latent_dim: size of z.
    """

    def __init__(self, image_size: Sequence[int], channels: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.grid = grid_shape(image_size, channels)
        c4, h4, w4 = self.grid
        self.project = nn.Linear(latent_dim, c4 * h4 * w4, bias=False)
        # BatchNorm2d on the grid (not BatchNorm1d on the vector): a batch of 1 still trains.
        self.project_norm = nn.Sequential(nn.BatchNorm2d(c4), nn.ReLU())
        layers = up_convs(c4, [*(int(c) for c in reversed(channels[:-1])), 1])
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 1, H, W) in [0, 1]."""
        grid = self.project_norm(self.project(z).view(-1, *self.grid))
        return torch.sigmoid(self.deconvs(grid))


def _dc_grid(image_size: Sequence[int], channels: Sequence[int]) -> tuple[int, int]:
    height, width = int(image_size[0]), int(image_size[1])
    factor = 2 ** len(channels)
    if not channels or height % factor or width % factor:
        raise ValueError(
            f"image_size {height}x{width} must be divisible by 2**len(channels) = {factor}"
        )
    return height // factor, width // factor


class DCEncoder(nn.Module):
    """(B, 1, H, W) -> (B, out_dim); ``features`` gives the last hidden map (GANomaly layout).

    Args:
        image_size: (H, W), each divisible by ``2 ** len(channels)``.
        channels: output channels of the strided conv layers.
        out_dim: size of the output vector.
    """

    def __init__(self, image_size: Sequence[int], channels: Sequence[int], out_dim: int) -> None:
        super().__init__()
        grid = _dc_grid(image_size, channels)
        self.body = nn.Sequential(*down_convs(1, channels, "BATCH", bias=False))
        self.head = nn.Conv2d(int(channels[-1]), out_dim, kernel_size=grid, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> last hidden feature map (B, C, H/2^n, W/2^n)."""
        out: torch.Tensor = self.body(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, out_dim)."""
        out: torch.Tensor = self.head(self.features(x))
        return out.flatten(1)


class DCDecoder(nn.Module):
    """(B, latent_dim) -> (B, 1, H, W) in [0, 1], mirroring `DCEncoder`."""

    def __init__(self, image_size: Sequence[int], channels: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        grid = _dc_grid(image_size, channels)
        reversed_channels = [int(c) for c in reversed(channels)]
        self.stem = Convolution(
            2,
            latent_dim,
            reversed_channels[0],
            kernel_size=grid,
            strides=grid,
            padding=0,
            output_padding=0,
            is_transposed=True,
            act="RELU",
            norm="BATCH",
            bias=False,
        )
        self.body = nn.Sequential(*up_convs(reversed_channels[0], [*reversed_channels[1:], 1]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 1, H, W)."""
        return torch.sigmoid(self.body(self.stem(z[:, :, None, None])))
