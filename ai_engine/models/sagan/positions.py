"""Position encodings of SAGAN and its chapter-3 variants (seed 003 §2.4.7, §3.1).

Concatenated codes (absolute): ``acm`` (the paper's binary patch codes), ``sinusoidal``,
``learned``. In attention (relative), used by `BottleneckAttention`: ``rope``, ``alibi``,
``relative`` (a learned bias per head and relative offset).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

CONCAT_ENCODINGS = ("acm", "sinusoidal", "learned")
ATTENTION_ENCODINGS = ("rope", "alibi", "relative")
ENCODINGS = (*CONCAT_ENCODINGS, *ATTENTION_ENCODINGS, "none")


def acm_bits(grid: int) -> int:
    """Bits of the binary patch code of an N x N grid: ceil(log2(N * N) + 1) (eq. 2.20)."""
    return math.ceil(math.log2(grid * grid) + 1)


def binary_patch_codes(height: int, width: int, grid: int) -> torch.Tensor:
    """(bits, H, W): each pixel carries the binary code of its patch in an N x N grid."""
    rows = torch.arange(height) * grid // height
    cols = torch.arange(width) * grid // width
    index = rows[:, None] * grid + cols[None, :]
    powers = torch.tensor([2**b for b in range(acm_bits(grid))])
    return (torch.div(index[None], powers[:, None, None], rounding_mode="floor") % 2).float()


def sinusoidal_codes(height: int, width: int, dim: int) -> torch.Tensor:
    """(dim, H, W): sin/cos of y (first half) and x (second half) at dim/4 frequencies each.

    Positions are in units of 1/64 of the image side, so every resolution level sees the
    same code at the same anatomical place.
    """
    if dim % 4:
        raise ValueError(f"sinusoidal dim must be divisible by 4, got {dim}")
    n_freq = dim // 4
    freqs = 1.0 / (10000.0 ** (torch.arange(n_freq).float() * 4 / dim))
    y = (torch.arange(height).float() + 0.5) * 64.0 / height
    x = (torch.arange(width).float() + 0.5) * 64.0 / width
    ay = y[None, :] * freqs[:, None]  # (F, H)
    ax = x[None, :] * freqs[:, None]  # (F, W)
    y_codes = torch.cat([ay.sin(), ay.cos()])[:, :, None].expand(-1, height, width)
    x_codes = torch.cat([ax.sin(), ax.cos()])[:, None, :].expand(-1, height, width)
    return torch.cat([y_codes, x_codes])


class PositionChannels(nn.Module):
    """Concatenates position channels to a feature map (B, C, H, W) -> (B, C + P, H, W).

    Args:
        encoding: ``acm``, ``sinusoidal``, ``learned`` or ``none`` (nothing added).
        grid: N of the N x N patch grid (``acm``, ``learned``).
        dim: channels of ``sinusoidal`` and ``learned`` codes.
    """

    def __init__(self, encoding: str, grid: int = 4, dim: int = 8) -> None:
        super().__init__()
        if encoding not in (*CONCAT_ENCODINGS, *ATTENTION_ENCODINGS, "none"):
            raise ValueError(f"position encoding {encoding!r}: valid are {', '.join(ENCODINGS)}")
        self.encoding = encoding if encoding in CONCAT_ENCODINGS else "none"
        self.grid = grid
        self.dim = dim
        self.table: nn.Parameter | None = None
        if self.encoding == "learned":
            self.table = nn.Parameter(torch.randn(dim, grid, grid) * 0.1)

    @property
    def n_channels(self) -> int:
        """P, the number of channels added."""
        if self.encoding == "acm":
            return acm_bits(self.grid)
        return 0 if self.encoding == "none" else self.dim

    def codes(self, height: int, width: int) -> torch.Tensor:
        """(P, H, W) position channels."""
        if self.encoding == "acm":
            return binary_patch_codes(height, width, self.grid)
        if self.encoding == "sinusoidal":
            return sinusoidal_codes(height, width, self.dim)
        if self.table is not None:
            return F.interpolate(self.table[None], size=(height, width), mode="nearest")[0]
        return torch.zeros(0, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C + P, H, W)."""
        if self.encoding == "none":
            return x
        codes = self.codes(x.shape[2], x.shape[3]).to(x)
        return torch.cat([x, codes[None].expand(x.shape[0], -1, -1, -1)], dim=1)


def _rotate(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """RoPE rotation of pairs (even, odd) of the last dim of t (..., N, D) by angles (N, D/2)."""
    even, odd = t[..., 0::2], t[..., 1::2]
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


class BottleneckAttention(nn.Module):
    """Multi-head self-attention over the bottleneck's H x W tokens with a relative encoding.

    ``rope``: queries and keys rotated by y (first half of each head) and x (second half);
    ``alibi``: score minus a head-specific slope times the Manhattan distance (eq. 3.3);
    ``relative``: score plus a learned bias per head and (dy, dx) offset (eq. 3.4);
    ``none``: plain attention. Residual, then layer norm.

    Args:
        dim: channels C.
        heads: attention heads (C divisible by heads; for rope C / heads divisible by 4).
        encoding: one of ``rope``, ``alibi``, ``relative``, ``none``.
        size: (H, W) of the bottleneck (``relative`` needs it for its table).
    """

    def __init__(self, dim: int, heads: int, encoding: str, size: tuple[int, int]) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention dim {dim} not divisible by {heads} heads")
        if encoding not in (*ATTENTION_ENCODINGS, "none"):
            raise ValueError(f"attention encoding {encoding!r}: rope, alibi, relative or none")
        self.head_dim = dim // heads
        if encoding == "rope" and self.head_dim % 4:
            raise ValueError(f"rope needs a head dim divisible by 4, got {self.head_dim}")
        self.heads = heads
        self.encoding = encoding
        self.size = size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
        self.register_buffer("slopes", slopes, persistent=False)
        self.bias_table: nn.Parameter | None = None
        if encoding == "relative":
            self.bias_table = nn.Parameter(torch.zeros(heads, 2 * size[0] - 1, 2 * size[1] - 1))

    @staticmethod
    def _coords(height: int, width: int, device: torch.device) -> torch.Tensor:
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
        )
        return torch.stack([ys.flatten(), xs.flatten()], dim=1)  # (N, 2)

    def _bias(self, coords: torch.Tensor) -> torch.Tensor | None:
        delta = coords[None, :, :] - coords[:, None, :]  # (N, N, 2): j - i
        if self.encoding == "alibi":
            distance = delta.abs().sum(-1).float()
            slopes = torch.as_tensor(self.slopes)
            return -slopes[:, None, None] * distance[None]
        if self.bias_table is not None:
            if tuple(int(v) for v in coords.max(0).values + 1) != self.size:
                raise ValueError(f"relative bias table is for a {self.size} bottleneck")
            dy = delta[..., 0] + self.size[0] - 1
            dx = delta[..., 1] + self.size[1] - 1
            return self.bias_table[:, dy, dx]
        return None

    def _rope(self, t: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        quarter = self.head_dim // 4
        freqs = 1.0 / (10000.0 ** (torch.arange(quarter, device=t.device).float() / quarter))
        ay = coords[:, 0:1].float() * freqs[None]  # (N, D/4)
        ax = coords[:, 1:2].float() * freqs[None]
        half = self.head_dim // 2
        return torch.cat([_rotate(t[..., :half], ay), _rotate(t[..., half:], ax)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = (
            self.qkv(tokens).view(b, h * w, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )
        coords = self._coords(h, w, x.device)
        if self.encoding == "rope":
            q, k = self._rope(q, coords), self._rope(k, coords)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, heads, N, N)
        bias = self._bias(coords)
        if bias is not None:
            scores = scores + bias[None]
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, h * w, c)
        tokens = self.norm(tokens + self.proj(out))
        result: torch.Tensor = tokens.transpose(1, 2).reshape(b, c, h, w)
        return result
