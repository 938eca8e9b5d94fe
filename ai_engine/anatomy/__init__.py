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

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["ANATOMIES", "RegionMask"]

#: The values ``ModelCard.anatomy`` may take.
ANATOMIES = ("", "lungs", "brain")


@dataclass(frozen=True)
class RegionMask:
    """The anatomy region of one image (or one slice of a volume).

    Attributes:
        mask: (H, W) bool at the source image's resolution, True inside the region; all
            False when ``reason`` is set.
        reason: why no plausible region was found (the image is then not analysed), or None.
    """

    mask: npt.NDArray[np.bool_]
    reason: str | None = None
