"""Random augmentation of training images with MONAI (one owner).

Used by ``training fit`` (a config's ``augment:`` section) and by the federated sites (a
compact text spec).

A spec is a mapping; every key is optional:

- ``prob`` (0.5): probability that an image gets the affine, and separately the contrast change;
- ``rotate_deg`` (0): maximum rotation in degrees (uniform in [-r, r]);
- ``scale`` (0): maximum relative zoom (uniform in [1 - s, 1 + s]);
- ``translate_px`` (0): maximum shift in pixels along each axis;
- ``gamma`` (none): ``[low, high]`` range of a random gamma contrast change;
- ``flip`` (0): probability of a left-right flip.

Each image of a batch gets its own draw, so an augmented batch still holds one image per real
image (under DP-SGD each real image still gives one clipped gradient row: the sensitivity is
unchanged). The transforms draw from their own random state seeded with ``seed``, so a run is
reproducible and the caller's batch order is untouched by turning augmentation on; successive
calls draw new parameters.

`parse_spec` reads the compact text form that travels in a Flower run config (scalars only):
comma-separated tokens ``rotate<deg>`` (``rotate`` = 10), ``zoom<frac>`` (``zoom`` = 0.1) and
``flip``; its rotation and zoom apply to every image (``prob`` 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

AUGMENT_KEYS = frozenset({"prob", "rotate_deg", "scale", "translate_px", "gamma", "flip"})

_TOKEN = re.compile(r"^(rotate|flip|zoom)([0-9.]*)$")


def parse_spec(text: str) -> dict[str, Any]:
    """The spec of a compact text form such as ``"rotate10,flip,zoom0.1"`` (``""``: ``{}``).

    Raises:
        ValueError: an unknown token or a bad value.
    """
    spec: dict[str, Any] = {}
    for raw in text.split(","):
        token = raw.strip().lower()
        if not token:
            continue
        m = _TOKEN.match(token)
        if m is None:
            raise ValueError(f"unknown augmentation {token!r}; valid: rotate<deg>, flip, zoom<f>")
        name, value = m.group(1), m.group(2)
        if name == "flip":
            if value:
                raise ValueError(f"bad value in augmentation {token!r}: flip takes none")
            spec["flip"] = 0.5
            continue
        try:
            v = float(value) if value else {"rotate": 10.0, "zoom": 0.1}[name]
        except ValueError:
            raise ValueError(f"bad value in augmentation {token!r}") from None
        if name == "zoom" and not 0.0 <= v < 1.0:
            raise ValueError(f"zoom fraction must be in [0, 1), got {v}")
        spec["prob"] = 1.0
        spec["rotate_deg" if name == "rotate" else "scale"] = v
    return spec


def make_augment(
    spec: Mapping[str, Any] | None, seed: int
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function (B, 1, H, W) -> (B, 1, H, W) in [0, 1] augmenting each image.

    None when the spec asks for nothing.

    Raises:
        ValueError: an unknown key or a value out of range.
    """
    if not spec:
        return None
    unknown = set(spec) - AUGMENT_KEYS
    if unknown:
        raise ValueError(f"augment: unknown keys {sorted(unknown)}; valid: {sorted(AUGMENT_KEYS)}")
    from monai.transforms import RandAdjustContrast, RandAffine, RandFlip

    prob = float(spec.get("prob", 0.5))
    flip_prob = float(spec.get("flip", 0.0))
    for key, p in (("prob", prob), ("flip", flip_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment.{key} {p} must be in [0, 1]")
    rotate = math.radians(float(spec.get("rotate_deg", 0.0)))
    scale = float(spec.get("scale", 0.0))
    if not 0.0 <= scale < 1.0:
        raise ValueError(f"augment.scale {scale} must be in [0, 1)")
    shift = float(spec.get("translate_px", 0.0))
    steps: list[Any] = []
    if rotate or scale or shift:
        affine = RandAffine(
            prob=prob,
            rotate_range=(rotate,),
            scale_range=(scale, scale),
            translate_range=(shift, shift),
            padding_mode="border",
        )
        affine.set_random_state(seed)
        steps.append(affine)
    if spec.get("gamma") is not None:
        low, high = (float(v) for v in spec["gamma"])
        if not 0 < low <= high:
            raise ValueError(f"augment.gamma {spec['gamma']} must be 0 < low <= high")
        contrast = RandAdjustContrast(prob=prob, gamma=(low, high))
        contrast.set_random_state(seed + 1)
        steps.append(contrast)
    if flip_prob:
        flip = RandFlip(prob=flip_prob, spatial_axis=1)  # (1, H, W): axis 1 of space is W
        flip.set_random_state(seed + 2)
        steps.append(flip)
    if not steps:
        return None

    def augment(batch: torch.Tensor) -> torch.Tensor:
        if len(batch) == 0:
            return batch
        out = []
        for image in batch:  # (1, H, W): MONAI array transforms are channel-first, per image
            for step in steps:
                image = torch.as_tensor(step(image))
            out.append(image.as_subclass(torch.Tensor).float())
        return torch.stack(out).clamp(0.0, 1.0)

    return augment
