"""Anatomy masks: where in an image a model's findings may lie (lung field, brain).

A model card names the anatomy its findings belong to (``ModelCard.anatomy``: ``""`` for
none, ``"lungs"`` for chest radiographs, ``"brain"`` for brain MRI). Preprocessing for such a
model finds that region first, for the node (`ai_engine.pipeline`) and for
``python -m training evaluate`` alike, so that

- the anomaly map is restricted to the region (zero outside it),
- the image score comes from inside the region,
- an image where no plausible region is found is reported *not analysed*, with a reason a
  radiologist can read (`RegionMask.reason`).

This package owns that concept; each anatomy lives in its own module (``lungs``, ``brain``)
and returns `RegionMask` objects at the source image's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # imported where used: reading a card's anatomy needs no torch
    import torch

    from ai_engine.types import AnomalyOutput

__all__ = [
    "ANATOMIES",
    "REGION_MARGIN_PX",
    "RegionMask",
    "find_regions",
    "region_tensor",
    "restrict",
]

#: The values ``ModelCard.anatomy`` may take.
ANATOMIES = ("", "lungs", "brain")


@dataclass(frozen=True)
class RegionMask:
    """The anatomy region of one image (or one slice of a volume).

    Attributes:
        mask: (H, W) bool at the source image's resolution, True inside the region; all
            False when ``reason`` is set.
        reason: why no plausible region was found (the image is then not analysed), or None.
        parts: how many separate parts the finder found, where that is a check of it (the
            lungs: 2 expected), else None.
    """

    mask: npt.NDArray[np.bool_]
    reason: str | None = None
    parts: int | None = None


#: By default a region is widened by this many pixels of the model input before a map is
#: restricted to it (at 128x128: 1.6 % of the width), so that findings on its border are kept;
#: a card may set another (``training.scoring.region_margin``).
REGION_MARGIN_PX = 2


def find_regions(
    anatomy: str, images: Sequence[npt.ArrayLike], device: str | torch.device = "cpu"
) -> list[RegionMask] | None:
    """The region of each image for a card's ``anatomy``; None when the card names none.

    Only per-image anatomies are found here (``lungs``); a brain is found per volume
    (`ai_engine.anatomy.brain`, called by the pipeline per series).
    """
    if anatomy == "lungs":
        from ai_engine.anatomy.lungs import lung_fields

        return lung_fields(images, device)
    return None


def region_tensor(
    masks: Sequence[npt.NDArray[np.bool_]], image_size: tuple[int, int]
) -> torch.Tensor:
    """(N, 1, H, W) bool: each source-resolution mask at the model input size.

    The mask is squashed like the image (`ai_engine.transforms.model_input`); a model pixel
    counts as inside when any of it is.
    """
    import torch

    from ai_engine.transforms import model_input

    if not masks:
        return torch.zeros(0, 1, *image_size, dtype=torch.bool)
    return torch.stack([model_input(m.astype(np.float32), image_size) for m in masks]) > 0


def widen(region: torch.Tensor, margin: int) -> torch.Tensor:
    """(B, 1, H, W) bool ``region`` dilated by ``margin`` pixels (a square neighbourhood)."""
    import torch

    if margin <= 0:
        return region.bool()
    kernel = 2 * margin + 1
    pooled = torch.nn.functional.max_pool2d(region.float(), kernel, stride=1, padding=margin)
    return pooled > 0


def restrict(
    output: AnomalyOutput,
    x: torch.Tensor,
    region: torch.Tensor,
    rule: str = "map_top",
    top_fraction: float = 0.05,
    margin: int = REGION_MARGIN_PX,
) -> AnomalyOutput:
    """``output`` with its map zeroed outside ``region`` (widened) and its score from inside.

    The score follows the model's rule: ``map_mean`` the mean of the map inside, ``mse`` the
    mean squared reconstruction error inside (when the model reconstructs), any other rule the
    mean of the top ``top_fraction`` of the map values inside. An empty region scores 0.

    Args:
        output: the model's output for the batch ``x``.
        x: (B, 1, H, W) model input.
        region: (B, 1, H, W) bool (`region_tensor`), on any device.
        rule: the card's score rule (``training.scoring.rule``).
        top_fraction: the card's ``training.scoring.top_fraction``.
        margin: pixels by which the region is widened first (``scoring.region_margin``).
    """
    import torch

    from ai_engine.types import AnomalyOutput

    amap = output.anomaly_map
    inside = widen(region.to(amap.device), margin)
    amap = torch.where(inside, amap, torch.zeros_like(amap))
    count = inside.flatten(1).sum(1)
    safe = count.clamp_min(1).to(amap.dtype)
    if rule == "map_mean":
        score = amap.flatten(1).sum(1) / safe
    elif rule == "mse" and output.reconstruction is not None:
        error = (x.to(amap.device) - output.reconstruction.to(amap.device)) ** 2
        score = torch.where(inside, error, torch.zeros_like(error)).flatten(1).sum(1) / safe
    else:
        flat = torch.where(inside, amap, torch.full_like(amap, -torch.inf)).flatten(1)
        ordered = flat.sort(dim=1, descending=True).values.clamp_min(0)
        k = (count.to(amap.dtype) * top_fraction).round().clamp_min(1).long()
        ranks = torch.arange(flat.shape[1], device=amap.device).unsqueeze(0)
        top = torch.where(ranks < k.unsqueeze(1), ordered, torch.zeros_like(ordered))
        score = top.sum(1) / k.to(amap.dtype)
    score = torch.where(count > 0, score, torch.zeros_like(score))
    return AnomalyOutput(score=score, anomaly_map=amap, reconstruction=output.reconstruction)
