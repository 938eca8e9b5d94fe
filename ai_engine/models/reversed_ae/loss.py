"""Losses of the reversed autoencoder: ELBO terms, introspective hinge, reversed embedding loss.

Per image sums are divided by the number of pixels, so the terms are per-pixel averages.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, (B,)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def reconstruction_error(x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Summed squared error per image, (B,)."""
    return ((x - reconstruction) ** 2).flatten(1).sum(1)


def reversed_embedding_loss(
    features_x: list[torch.Tensor], features_rec: list[torch.Tensor]
) -> torch.Tensor:
    """Multi-scale reversed embedding loss (scalar).

    1 - cosine similarity of the encoder's features of the input and of its reconstruction
    (fed back, "reversed", through the encoder), averaged over positions and scales. The
    input's features are the fixed target.
    """
    terms = [
        (1 - F.cosine_similarity(fx.detach(), fr, dim=1, eps=1e-6)).mean()
        for fx, fr in zip(features_x, features_rec, strict=True)
    ]
    return torch.stack(terms).mean()


def perceptual_map(
    features_x: list[torch.Tensor], features_rec: list[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """(B, 1, H, W): mean over scales of 1 - cosine similarity, upsampled bilinearly."""
    maps = [
        F.interpolate(
            (1 - F.cosine_similarity(fx, fr, dim=1, eps=1e-6))[:, None],
            size=size,
            mode="bilinear",
            align_corners=False,
        )
        for fx, fr in zip(features_x, features_rec, strict=True)
    ]
    return torch.stack(maps).mean(0)


def clahe(x: torch.Tensor, tiles: int = 4, clip_limit: float = 2.0, bins: int = 64) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation of (B, 1, H, W) images in [0, 1].

    Per tile of a ``tiles`` x ``tiles`` grid: histogram with ``bins`` bins, clipped at
    ``clip_limit`` times the mean bin count (the excess spread over all bins), normalised
    cumulative sum as the mapping; each pixel's value is bilinearly interpolated between the
    mappings of the four nearest tile centres (as CLAHE does). H and W must be divisible by
    ``tiles``.
    """
    b, _, h, w = x.shape
    if h % tiles or w % tiles:
        raise ValueError(f"image {h}x{w} is not divisible into {tiles}x{tiles} tiles")
    th, tw = h // tiles, w // tiles
    idx = (x[:, 0].clamp(0, 1) * bins).long().clamp(0, bins - 1)  # (B, H, W)
    tile_idx = idx.view(b, tiles, th, tiles, tw).permute(0, 1, 3, 2, 4).reshape(b, tiles**2, -1)
    hist = torch.zeros(b, tiles**2, bins, dtype=x.dtype, device=x.device)
    hist.scatter_add_(2, tile_idx, torch.ones_like(tile_idx, dtype=x.dtype))
    limit = clip_limit * th * tw / bins
    excess = (hist - limit).clamp(min=0).sum(-1, keepdim=True)
    hist = hist.clamp(max=limit) + excess / bins
    cdf = (hist.cumsum(-1) / (th * tw)).reshape(b, -1)  # (B, tiles * tiles * bins)

    def axis(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = ((torch.arange(n, device=x.device, dtype=x.dtype) + 0.5) / size - 0.5).clamp(
            0, tiles - 1
        )
        lo = pos.floor().long()
        return lo, (lo + 1).clamp(max=tiles - 1), pos - lo

    y0, y1, wy = axis(h, th)
    x0, x1, wx = axis(w, tw)

    def lookup(ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
        tile = ty[:, None] * tiles + tx[None, :]  # (H, W)
        flat = (tile[None] * bins + idx).reshape(b, -1)
        return cdf.gather(1, flat).view(b, h, w)

    top = lookup(y0, x0) * (1 - wx) + lookup(y0, x1) * wx
    bottom = lookup(y1, x0) * (1 - wx) + lookup(y1, x1) * wx
    return (top * (1 - wy[:, None]) + bottom * wy[:, None])[:, None]
