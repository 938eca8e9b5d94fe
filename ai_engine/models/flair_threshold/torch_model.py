"""The threshold baseline's "network": fixed image filters, no learnt weight.

Input: a brain-extracted FLAIR slice normalised per volume inside the brain
(`ai_engine.anatomy.brain.normalise_in_brain`: 0 outside the brain, the median brain 0.25).
Output map: the normalised intensity after a ``median_size`` x ``median_size`` median filter,
inside the brain mask eroded by ``erosion_px`` pixels (the rim of the mask is where extraction
errors and partial-volume skull sit), 0 elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from ai_engine.models.components.brain_map import eroded_brain, median_filter


class IntensityMap(nn.Module):
    """(B, 1, H, W) normalised brain slices -> (B, 1, H, W) filtered intensity in the brain.

    Args:
        median_size: side of the median filter (odd).
        erosion_px: pixels the brain mask is eroded by.
    """

    def __init__(self, median_size: int = 5, erosion_px: int = 3) -> None:
        super().__init__()
        if median_size < 1 or median_size % 2 == 0:
            raise ValueError(f"median_size must be odd and positive, got {median_size}")
        if erosion_px < 0:
            raise ValueError(f"erosion_px must be >= 0, got {erosion_px}")
        self.median_size = int(median_size)
        self.erosion_px = int(erosion_px)
        # one buffer so the checkpoint has a weights file like every other model
        self.register_buffer("median_brain", torch.tensor(0.25))

    def brain(self, x: torch.Tensor) -> torch.Tensor:
        """The eroded brain mask (B, 1, H, W) as 0/1."""
        return eroded_brain(x, self.erosion_px)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The anomaly map: median-filtered intensity inside the eroded brain."""
        return median_filter(x, self.median_size) * self.brain(x)
