"""Augmentation of a site's real images (seed 000: rotations, flips, scaling), with MONAI.

A spec is a comma-separated list of tokens, applied in this order to each image on its own:

- ``rotate<deg>``: rotation by an angle uniform in [-deg, +deg] degrees (``rotate`` = 10);
- ``flip``: left-right flip with probability 1/2;
- ``zoom<frac>``: isotropic scaling by a factor uniform in [1 - frac, 1 + frac], output kept at
  the input's size (``zoom`` = 0.1).

``""`` = no augmentation. Each image of a batch gets its own random draw, so an augmented
batch still holds one image per real image: under DP-SGD each real image still contributes
exactly one clipped gradient row per step (the augmentation is applied to the image before
its per-sample gradient is clipped, so the sensitivity is unchanged).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

_TOKEN = re.compile(r"^(rotate|flip|zoom)([0-9.]*)$")


def parse(spec: str) -> list[tuple[str, float]]:
    """``[(name, value), ...]`` of a spec.

    Raises:
        ValueError: an unknown token or a bad value.
    """
    out: list[tuple[str, float]] = []
    for raw in spec.split(","):
        token = raw.strip().lower()
        if not token:
            continue
        m = _TOKEN.match(token)
        if m is None:
            raise ValueError(f"unknown augmentation {token!r}; valid: rotate<deg>, flip, zoom<f>")
        name, value = m.group(1), m.group(2)
        default = {"rotate": 10.0, "flip": 0.5, "zoom": 0.1}[name]
        try:
            v = float(value) if value else default
        except ValueError:
            raise ValueError(f"bad value in augmentation {token!r}") from None
        if name == "zoom" and not 0.0 <= v < 1.0:
            raise ValueError(f"zoom fraction must be in [0, 1), got {v}")
        out.append((name, v))
    return out


def make_augmenter(spec: str, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function (B, 1, H, W) -> (B, 1, H, W) in [0, 1] for ``spec``; None for ``""``.

    The MONAI transforms are seeded with ``seed``; successive calls draw new parameters.
    """
    steps = parse(spec)
    if not steps:
        return None
    from monai.transforms import Compose, RandFlip, RandRotate, RandZoom

    transforms = []
    for name, v in steps:
        if name == "rotate":
            rad = math.radians(v)
            transforms.append(
                RandRotate(range_x=rad, prob=1.0, keep_size=True, padding_mode="border")
            )
        elif name == "flip":
            transforms.append(RandFlip(prob=0.5, spatial_axis=1))
        else:
            transforms.append(
                RandZoom(prob=1.0, min_zoom=1.0 - v, max_zoom=1.0 + v, keep_size=True)
            )
    chain = Compose(transforms)
    chain.set_random_state(seed=seed)

    def apply(batch: torch.Tensor) -> torch.Tensor:
        if len(batch) == 0:
            return batch
        out = [torch.as_tensor(chain(img)) for img in batch]
        return torch.stack([o.as_subclass(torch.Tensor) for o in out]).clamp_(0.0, 1.0)

    return apply
