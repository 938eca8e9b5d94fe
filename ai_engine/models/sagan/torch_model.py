"""SAGAN's generator and critic as pure ``nn.Module``s, with the chapter-3 variants.

Generator (``backbone: unet``): a U-Net whose encoder levels receive the position channels
(ACM and the absolute variants), whose skip connections pass through attention gates
(ARRM, eqs. 2.21-2.22) and whose bottleneck holds a multi-head self-attention block for the
relative variants (``rope``, ``alibi``, ``relative``). ``backbone: swin``: MONAI's SwinUNETR
(shifted-window attention, its own relative bias, no explicit encoding unless an absolute one
is asked for, then concatenated to the input).

Output (``output``): ``image`` = sigmoid of the last layer (the restored image directly), or
``residual`` = ``clamp(x + tanh(last layer), 0, 1)`` with the last layer zero-initialised, so an
untrained generator is the identity. With ``image`` the sigmoid starts at 0.5 everywhere and
Adam moves the output bias by about ``lr`` per step: a few hundred CPU steps do not reach the
dark background (identity L1 stayed at 0.37-0.41 on brain FLAIR), hence ``residual`` is the
default; the seed does not say how the generator's output layer is built.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import SwinUNETR
from torch import nn

from ai_engine.models.components.wgan_gp import PatchDiscriminator
from ai_engine.models.sagan.positions import (
    ATTENTION_ENCODINGS,
    ENCODINGS,
    BottleneckAttention,
    PositionChannels,
)

BACKBONES = ("unet", "swin")
OUTPUTS = ("residual", "image")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        Convolution(2, c_in, c_out, kernel_size=3, act=("LEAKYRELU", {"negative_slope": 0.2}),
                    norm="INSTANCE"),
        Convolution(2, c_out, c_out, kernel_size=3, act=("LEAKYRELU", {"negative_slope": 0.2}),
                    norm="INSTANCE"),
    )  # fmt: skip


class AttentionGate(nn.Module):
    """alpha = sigmoid(C3(relu(C1(f) + C2(g)))); returns alpha * skip (eqs. 2.21-2.22).

    Args:
        skip_channels: channels of the encoder skip features.
        gate_channels: channels of the decoder (gating) features at the same resolution.
        inter_channels: channels of C1 and C2.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(skip_channels, inter_channels, kernel_size=1)
        self.c2 = nn.Conv2d(gate_channels, inter_channels, kernel_size=1)
        self.c3 = nn.Conv2d(inter_channels, 1, kernel_size=1)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Gated skip (B, Cs, H, W) from skip (B, Cs, H, W) and gate (B, Cg, H, W)."""
        alpha = torch.sigmoid(self.c3(torch.relu(self.c1(skip) + self.c2(gate))))
        return alpha * skip


class SaganGenerator(nn.Module):
    """Healthy-image generator of SAGAN and its variants (selected by arguments).

    Args:
        image_size: (H, W), divisible by 16 (unet) or 32 (swin).
        channels: channels of the 4 encoder levels (unet).
        latent_dim: channels of the bottleneck (unet).
        position_encoding: ``acm`` | ``sinusoidal`` | ``learned`` | ``rope`` | ``alibi`` |
            ``relative`` | ``none``.
        pe_grid: N of the N x N patch grid of ``acm`` and ``learned``.
        pe_dim: channels of ``sinusoidal`` and ``learned`` codes.
        attention_heads: heads of the bottleneck self-attention (relative encodings).
        backbone: ``unet`` or ``swin``.
        swin_feature_size: SwinUNETR feature size (a multiple of 12).
        output: ``residual`` (identity at initialisation) or ``image`` (see the module doc).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (16, 32, 64, 128),
        latent_dim: int = 128,
        position_encoding: str = "acm",
        pe_grid: int = 4,
        pe_dim: int = 8,
        attention_heads: int = 4,
        backbone: str = "unet",
        swin_feature_size: int = 12,
        output: str = "residual",
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output {output!r}: valid are {', '.join(OUTPUTS)}")
        self.output = output
        height, width = int(image_size[0]), int(image_size[1])
        if position_encoding not in ENCODINGS:
            raise ValueError(
                f"position_encoding {position_encoding!r}: valid are {', '.join(ENCODINGS)}"
            )
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r}: valid are {', '.join(BACKBONES)}")
        if len(channels) != 4:
            raise ValueError(f"channels must have 4 entries, got {list(channels)}")
        self.backbone = backbone
        self.positions = PositionChannels(position_encoding, pe_grid, pe_dim)
        p = self.positions.n_channels
        if backbone == "swin":
            if position_encoding in ATTENTION_ENCODINGS:
                raise ValueError(
                    "backbone swin has its own windowed relative bias; position_encoding must "
                    "be none, acm, sinusoidal or learned"
                )
            if height % 32 or width % 32:
                raise ValueError(f"swin needs image_size divisible by 32, got {height}x{width}")
            if importlib.util.find_spec("einops") is None:
                raise ValueError("backbone swin needs einops (pip install einops; extra `swin`)")
            self.swin = SwinUNETR(
                in_channels=1 + p, out_channels=1, feature_size=swin_feature_size,
                spatial_dims=2, window_size=4, norm_name="instance",
            )  # fmt: skip
            if output == "residual":
                self._zero(self.swin.out.conv)
            return
        if height % 16 or width % 16:
            raise ValueError(f"image_size must be divisible by 16, got {height}x{width}")
        widths = [int(c) for c in channels]
        self.encoders = nn.ModuleList()
        c_in = 1
        for c in widths:
            self.encoders.append(_block(c_in + p, c))
            c_in = c
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(widths[-1] + p, int(latent_dim))
        self.attention: nn.Module = nn.Identity()
        if position_encoding in ATTENTION_ENCODINGS:
            self.attention = BottleneckAttention(
                int(latent_dim), attention_heads, position_encoding, (height // 16, width // 16)
            )
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoders = nn.ModuleList()
        c_in = int(latent_dim)
        for c in reversed(widths):
            self.ups.append(nn.ConvTranspose2d(c_in, c, kernel_size=2, stride=2))
            self.gates.append(AttentionGate(c, c, max(1, c // 2)))
            self.decoders.append(_block(2 * c, c))
            c_in = c
        self.head = nn.Conv2d(widths[0], 1, kernel_size=1)
        if output == "residual":
            self._zero(self.head)

    @staticmethod
    def _zero(layer: nn.Module) -> None:
        for param in layer.parameters():
            nn.init.zeros_(param)

    def _out(self, x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        if self.output == "residual":
            return (x + torch.tanh(last)).clamp(0.0, 1.0)
        return torch.sigmoid(last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Healthy version of (B, 1, H, W) images, in [0, 1]."""
        if self.backbone == "swin":
            return self._out(x, self.swin(self.positions(x)))
        skips = []
        h = x
        for encoder in self.encoders:
            h = encoder(self.positions(h))
            skips.append(h)
            h = self.pool(h)
        h = self.attention(self.bottleneck(self.positions(h)))
        for up, gate, decoder, skip in zip(
            self.ups, self.gates, self.decoders, reversed(skips), strict=True
        ):
            g = up(h)
            h = decoder(torch.cat([gate(skip, g), g], dim=1))
        return self._out(x, self.head(h))


class SaganCritic(nn.Module):
    """PatchGAN critic; the absolute encodings are concatenated to its input too (ch. 3.1).

    Args:
        position_encoding: as for the generator (relative ones add nothing here).
        pe_grid: N of the patch grid.
        pe_dim: channels of sinusoidal / learned codes.
        channels: channels of the critic's strided layers.
    """

    def __init__(
        self,
        position_encoding: str = "acm",
        pe_grid: int = 4,
        pe_dim: int = 8,
        channels: Sequence[int] = (32, 64, 128),
    ) -> None:
        super().__init__()
        self.positions = PositionChannels(position_encoding, pe_grid, pe_dim)
        self.body = PatchDiscriminator(1 + self.positions.n_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> patch scores."""
        out: torch.Tensor = self.body(self.positions(x))
        return out
