"""Optional MONAI random augmentation of training batches (config section ``augment:``).

``training fit`` applies it to training batches only (never to validation, calibration or
test images), after its fixed light shift and gain jitter. Keys, all optional:

- ``prob`` (0.5): probability that each image gets the affine, and separately the contrast change.
- ``rotate_deg`` (0): maximum rotation in degrees (uniform in [-r, r]).
- ``scale`` (0): maximum relative zoom (uniform in [1 - s, 1 + s]).
- ``translate_px`` (0): maximum shift in pixels along each axis.
- ``gamma`` (none): ``[low, high]`` range of a random gamma contrast change.

The transforms draw from their own generator seeded with the config's seed, so a run is
reproducible and the batch order (fit's generator) is unchanged by turning augmentation on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from monai.transforms import RandAdjustContrast, RandAffine

AUGMENT_KEYS = frozenset({"prob", "rotate_deg", "scale", "translate_px", "gamma"})


def make_augment(
    spec: dict[str, Any] | None, seed: int
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function (B, 1, H, W) -> (B, 1, H, W) in [0, 1] augmenting each image, or None.

    Args:
        spec: the config's ``augment`` section (None or empty: no augmentation).
        seed: seed of the transforms' random state.

    Raises:
        ValueError: an unknown key or a value out of range.
    """
    if not spec:
        return None
    unknown = set(spec) - AUGMENT_KEYS
    if unknown:
        raise ValueError(f"augment: unknown keys {sorted(unknown)}; valid: {sorted(AUGMENT_KEYS)}")
    prob = float(spec.get("prob", 0.5))
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"augment.prob {prob} must be in [0, 1]")
    rotate = math.radians(float(spec.get("rotate_deg", 0.0)))
    scale = float(spec.get("scale", 0.0))
    shift = float(spec.get("translate_px", 0.0))
    affine = None
    if rotate or scale or shift:
        affine = RandAffine(
            prob=prob,
            rotate_range=(rotate,),
            scale_range=(scale, scale),
            translate_range=(shift, shift),
            padding_mode="border",
        )
        affine.set_random_state(seed)
    contrast = None
    if spec.get("gamma") is not None:
        low, high = (float(v) for v in spec["gamma"])
        if not 0 < low <= high:
            raise ValueError(f"augment.gamma {spec['gamma']} must be 0 < low <= high")
        contrast = RandAdjustContrast(prob=prob, gamma=(low, high))
        contrast.set_random_state(seed + 1)
    if affine is None and contrast is None:
        return None

    def augment(batch: torch.Tensor) -> torch.Tensor:
        out = []
        for image in batch:  # (1, H, W): MONAI array transforms are channel-first, per image
            if affine is not None:
                image = torch.as_tensor(affine(image))
            if contrast is not None:
                image = torch.as_tensor(contrast(image))
            out.append(image.as_subclass(torch.Tensor).float())
        return torch.stack(out).clamp(0.0, 1.0)

    return augment
