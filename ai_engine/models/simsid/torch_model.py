"""SimSID's network: a patch-wise encoder-decoder with a space-aware memory and in-painting block.

The image (B, 1, H, W) is cut into a ``grid`` x ``grid`` array of non-overlapping patches. One
shared convolutional encoder turns every patch into a bottleneck feature map. The in-painting
block replaces each patch's bottleneck by what the *memory matrix of that grid cell* holds
(space-aware memory: one matrix per position, attention over its items restricted to the
``top_k`` most similar), optionally re-predicts it from the memory read-outs of its eight
neighbouring cells (a one-query transformer layer: the in-painting of SimSID), adds a binary
code of the cell's position and projects back. The student decoder reconstructs every patch
from that; a teacher decoder of the same shape reconstructs it from the encoder's bottleneck
directly, and the student's decoder features are distilled towards the teacher's. A DCGAN
discriminator on whole images is part of the network (its weights travel with the checkpoint):
SimSID scores an image by the discriminator's verdict on its reconstruction.

Skip connections join only the deepest ``skip_levels`` decoder stages (SimSID's ``concat``
ops on the two deepest stages), so fine detail of an anomaly cannot bypass the memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from ai_engine.models.components.dcgan import ConvEncoder


class SimSIDOutputs(NamedTuple):
    """What one training forward pass gives (all images (B, 1, H, W) in [0, 1])."""

    reconstruction: torch.Tensor
    teacher_reconstruction: torch.Tensor
    distillation: torch.Tensor  # scalar: summed MSE of student vs teacher decoder features
    attention: torch.Tensor  # (B, N_cells, n_slots) memory weights


def to_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * grid**2, C, H / grid, W / grid), cells in row-major order."""
    b, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    x = x.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * grid * grid, c, ph, pw)


def from_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of `to_patches`: (B * grid**2, C, h, w) -> (B, C, h * grid, w * grid)."""
    n, c, ph, pw = x.shape
    b = n // (grid * grid)
    x = x.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, grid * ph, grid * pw)


def position_bits(n_cells: int) -> torch.Tensor:
    """(n_cells, n_bits) binary code of each cell index (n_bits = floor(log2 n) + 1)."""
    n_bits = int(math.log2(max(1, n_cells))) + 1
    idx = torch.arange(n_cells).unsqueeze(1)
    return ((idx >> torch.arange(n_bits - 1, -1, -1)) & 1).float()


class SpaceAwareMemory(nn.Module):
    """One memory matrix of ``n_slots`` items per grid cell; a query reads its own cell's matrix.

    Read-out: softmax of the dot products of the query with the cell's items, restricted to the
    ``top_k`` largest (0: all items), then the weighted sum of the items.
    """

    def __init__(self, n_cells: int, n_slots: int, slot_dim: int, top_k: int = 5) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(slot_dim)
        self.items = nn.Parameter(torch.empty(n_cells, n_slots, slot_dim).uniform_(-bound, bound))
        self.top_k = int(top_k)

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, D) queries of the N cells -> read-outs (B, N, D) and weights (B, N, n_slots)."""
        logits = torch.einsum("bnd,nmd->bnm", query, self.items)
        if 0 < self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        return torch.einsum("bnm,nmd->bnd", weights, self.items), weights


class InpaintingBlock(nn.Module):
    """Bottleneck (B * N, C, h, w) -> memory-restored bottleneck of the same shape.

    Args:
        channels: bottleneck channels C.
        reduced: channels after the 1x1 reduction (a memory item is ``reduced * h * w`` long).
        spatial: (h, w) of the bottleneck.
        grid: cells per side (N = grid**2).
        n_slots: memory items per cell.
        top_k: memory items read per query.
        inpaint: re-predict each cell from its neighbours' read-outs (transformer layer).
        heads: attention heads of the in-painting layer (must divide the item length).

    Raises:
        ValueError: ``heads`` does not divide the memory item length.
    """

    bits: torch.Tensor

    def __init__(
        self,
        channels: int,
        reduced: int,
        spatial: tuple[int, int],
        grid: int,
        n_slots: int,
        top_k: int,
        inpaint: bool,
        heads: int,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.reduced = reduced
        self.spatial = spatial
        dim = reduced * spatial[0] * spatial[1]
        self.reduce = Convolution(2, channels, reduced, kernel_size=1, norm="BATCH", act="RELU")
        self.memory = SpaceAwareMemory(grid * grid, n_slots, dim, top_k)
        self.inpaint = inpaint
        if inpaint:
            if dim % heads:
                raise ValueError(f"heads {heads} must divide the memory item length {dim}")
            self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm1 = nn.LayerNorm(dim)
            self.feed_forward = nn.Sequential(
                nn.Linear(dim, max(1, dim // 4)), nn.ReLU(), nn.Linear(max(1, dim // 4), dim)
            )
            self.norm2 = nn.LayerNorm(dim)
        bits = position_bits(grid * grid)
        self.register_buffer("bits", bits, persistent=False)
        n_bits = int(bits.shape[1])
        self.expand = Convolution(
            2, reduced + n_bits, channels, kernel_size=1, norm="BATCH", act="RELU"
        )

    def _neighbours(self, read: torch.Tensor) -> torch.Tensor:
        """(B, N, D) read-outs -> (B * N, 8, D): each cell's 3x3 neighbours (zeros off-grid)."""
        b, n, d = read.shape
        g = self.grid
        as_grid = read.transpose(1, 2).reshape(b, d, g, g)
        cols = F.unfold(as_grid, kernel_size=3, padding=1)  # (B, D * 9, N)
        cols = cols.reshape(b, d, 9, n).permute(0, 3, 2, 1)  # (B, N, 9, D)
        keep = [k for k in range(9) if k != 4]  # drop the centre: the cell itself
        return cols[:, :, keep].reshape(b * n, 8, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B * N, C, h, w) -> (restored (B * N, C, h, w), memory weights (B, N, n_slots))."""
        n_cells = self.grid * self.grid
        reduced = self.reduce(x)
        query = reduced.reshape(-1, n_cells, reduced[0].numel())
        read, weights = self.memory(query)
        if self.inpaint:
            b, n, d = read.shape
            q = query.reshape(b * n, 1, d)
            context = self._neighbours(read)
            attended = self.attention(q, context, context)[0]
            out = F.relu(self.norm1(attended) + read.reshape(b * n, 1, d))
            read = F.relu(self.norm2(self.feed_forward(out)) + out).reshape(b, n, d)
        restored = read.reshape(-1, self.reduced, *self.spatial)
        bits = self.bits.to(restored.dtype).repeat(len(restored) // n_cells, 1)
        bits = bits[:, :, None, None].expand(-1, -1, *self.spatial)
        return self.expand(torch.cat([restored, bits], dim=1)), weights


class _Decoder(nn.Module):
    """Bottleneck (+ encoder skips at the deepest stages) -> patch in [0, 1] and stage features."""

    def __init__(self, channels: Sequence[int], skip_levels: int) -> None:
        super().__init__()
        levels = len(channels) - 1
        self.skip_levels = skip_levels
        self.ups = nn.ModuleList()
        self.convs = nn.ModuleList()
        for i in range(levels):
            c_in, c_out = channels[levels - i], channels[levels - 1 - i]
            self.ups.append(
                Convolution(2, c_in, c_out, strides=2, kernel_size=4, padding=1,
                            is_transposed=True, output_padding=0, norm="BATCH", act="RELU")
            )  # fmt: skip
            c_cat = c_out * (2 if i < skip_levels else 1)
            self.convs.append(Convolution(2, c_cat, c_out, kernel_size=3, norm="BATCH", act="RELU"))
        self.out = Convolution(2, channels[0], 1, kernel_size=1, conv_only=True)

    def forward(
        self, h: torch.Tensor, skips: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``skips[i]`` is the encoder feature at stage i (full patch resolution first)."""
        features = []
        for i, (up, conv) in enumerate(zip(self.ups, self.convs, strict=True)):
            h = up(h)
            if i < self.skip_levels:
                h = torch.cat([h, skips[len(skips) - 1 - i]], dim=1)
            h = conv(h)
            features.append(h)
        return torch.sigmoid(self.out(h)), features


class SimSIDNetwork(nn.Module):
    """SimSID generator (student + teacher decoders) and discriminator.

    Args:
        image_size: (H, W); each divisible by ``grid * 2**(len(channels) - 1)``.
        channels: encoder widths: the stem, then one per down-sampling stage.
        latent_dim: channels of the memory's 1x1 reduction of the bottleneck.
        grid: patches per side (SimSID on chest X-rays: 2).
        n_slots: memory items per grid cell (SimSID: 200).
        top_k: memory items read per query (SimSID: 5).
        inpaint: use the neighbour in-painting transformer layer.
        heads: attention heads of that layer.
        skip_levels: decoder stages (deepest first) that receive encoder skips.
        disc_channels: widths of the discriminator's 4 strided convolutions.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (128, 128),
        channels: Sequence[int] = (16, 32, 64, 128, 128),
        latent_dim: int = 32,
        grid: int = 2,
        n_slots: int = 200,
        top_k: int = 5,
        inpaint: bool = True,
        heads: int = 4,
        skip_levels: int = 2,
        disc_channels: Sequence[int] = (16, 32, 64, 64),
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 2:
            raise ValueError("channels needs the stem and at least one down-sampling stage")
        h, w = (int(s) for s in image_size)
        factor = grid * 2 ** (len(channels) - 1)
        if h % factor or w % factor:
            raise ValueError(f"image_size {h}x{w} must be divisible by grid * 2**stages = {factor}")
        self.grid = int(grid)
        self.stem = Convolution(2, 1, channels[0], kernel_size=3, norm="BATCH", act="RELU")
        self.downs = nn.ModuleList(
            nn.Sequential(
                Convolution(2, channels[i], channels[i + 1], strides=2, kernel_size=4, padding=1,
                            norm="BATCH", act="RELU"),
                Convolution(2, channels[i + 1], channels[i + 1], kernel_size=3, norm="BATCH",
                            act="RELU"),
            )
            for i in range(len(channels) - 1)
        )  # fmt: skip
        spatial = (h // factor, w // factor)
        self.inpainting = InpaintingBlock(
            channels[-1], int(latent_dim), spatial, self.grid, int(n_slots), int(top_k),
            bool(inpaint), int(heads),
        )  # fmt: skip
        skip_levels = max(0, min(int(skip_levels), len(channels) - 1))
        self.student = _Decoder(channels, skip_levels)
        self.teacher = _Decoder(channels, skip_levels)
        self.discriminator = ConvEncoder((h, w), [int(c) for c in disc_channels], 1)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Everything but the discriminator."""
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.stem(to_patches(x, self.grid))
        skips = []
        for down in self.downs:
            skips.append(h)
            h = down(h)
        return h, skips

    def outputs(self, x: torch.Tensor) -> SimSIDOutputs:
        """Student and teacher reconstructions, distillation loss and memory weights."""
        h, skips = self._encode(x)
        restored, weights = self.inpainting(h)
        student, s_feats = self.student(restored, skips)
        teacher, t_feats = self.teacher(h, [s.detach() for s in skips])
        distillation = torch.stack(
            [F.mse_loss(s, t) for s, t in zip(s_feats, t_feats, strict=True)]
        ).sum()
        return SimSIDOutputs(
            from_patches(student, self.grid), from_patches(teacher, self.grid), distillation,
            weights,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> the student's (memory-restored) reconstruction (B, 1, H, W)."""
        h, skips = self._encode(x)
        restored, _ = self.inpainting(h)
        student, _ = self.student(restored, skips)
        return from_patches(student, self.grid)

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> discriminator logits (B,): high means "looks like a real image"."""
        out: torch.Tensor = self.discriminator(x)
        return out.squeeze(1)
