"""Map post-processing shared by the brain models: median filter, eroded brain mask.

The input of a brain model (card ``anatomy: brain``) is a brain-extracted slice, 0 outside the
brain (`ai_engine.anatomy.brain.normalise_in_brain`), so the brain mask is ``x > 0``. Its rim
is eroded before a map is kept: that is where extraction errors and partial-volume skull sit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` x ``size`` median filter of (B, C, H, W), replicate padding.

    Raises:
        ValueError: ``size`` is not odd and positive.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"median size must be odd and positive, got {size}")
    if size == 1:
        return x
    pad = size // 2
    b, c, h, w = x.shape
    flat = x.reshape(b * c, 1, h, w)
    patches = F.unfold(F.pad(flat, (pad, pad, pad, pad), mode="replicate"), kernel_size=size)
    return patches.median(dim=1).values.view(b, c, h, w)


def eroded_brain(x: torch.Tensor, erosion_px: int) -> torch.Tensor:
    """The brain mask (``x > 0``) of brain-extracted slices, eroded by ``erosion_px``.

    Returns (B, 1, H, W) 0/1 of ``x``'s dtype.

    Raises:
        ValueError: ``erosion_px`` is negative.
    """
    if erosion_px < 0:
        raise ValueError(f"erosion_px must be >= 0, got {erosion_px}")
    inside = (x > 0).to(x.dtype)
    if erosion_px == 0:
        return inside
    k = 2 * erosion_px + 1
    outside = F.max_pool2d(1.0 - inside, kernel_size=k, stride=1, padding=erosion_px)
    return 1.0 - outside
