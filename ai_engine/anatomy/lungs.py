"""Lung fields of chest radiographs: a small U-Net trained on the Montgomery masks.

`lung_fields` finds the lung field of each radiograph and returns one `RegionMask` per image
at the image's own resolution. The network (`build_network`, a MONAI ``UNet``) sees the image
the way the anomaly models do (`ai_engine.transforms.model_input`: squashed to
`INPUT_SIZE`); its output is cleaned up by `clean_mask`:

- probability above 0.5, opened (thin leaks cut), holes filled;
- per side of the midline, the largest component (a lung) of at least `MIN_LUNG_SHARE` of
  the image, filled to its convex hull (a consolidation missing from a lung's outline is
  inside the field again; on a projection radiograph lung also lies behind the heart's
  border); a side without a lung, or with one much smaller than the other, gets the other
  one mirrored;
- *no plausible lung field* when nothing is left, the lungs span less than
  `MIN_LUNG_HEIGHT` of the image's height or cover a share outside `LUNG_AREA_RANGE`: the
  image is then not analysed, with that reason (also a blank image: standard deviation below
  `MIN_CONTRAST`). This is a check of the segmentation, not of
  what the image shows: the card's modality, body part and view (`ai_engine.suitability`)
  keep other images away; a brain MRI slice or a scanned form presented as a chest film is
  not always refused here.

The weights and their card live in ``lung_field/`` next to this module; they are produced by
``python -m training fit-lungs`` (training/fit_lungs.py) and checked against the card's
sha256 when loaded. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from ai_engine.anatomy import RegionMask
from ai_engine.errors import ModelLoadError
from ai_engine.transforms import model_input

__all__ = [
    "INPUT_SIZE",
    "LUNG_AREA_RANGE",
    "MIN_CONTRAST",
    "MIN_LUNG_HEIGHT",
    "MIN_LUNG_SHARE",
    "MIN_SIDE_RATIO",
    "WEIGHTS_DIR",
    "build_network",
    "clean_mask",
    "lung_fields",
    "lung_probabilities",
]

#: The segmenter's input (rows, cols): the image squashed like the anomaly models' input.
INPUT_SIZE = (128, 128)
#: A connected component smaller than this share of the image is not a lung.
MIN_LUNG_SHARE = 0.02
#: A lung smaller than this share of the other side's is replaced by the other one mirrored.
MIN_SIDE_RATIO = 0.4
#: The lungs span at least this share of the image's height (chest sets' val splits: 0.38 and
#: above; a brain MRI slice's dark corners taken for lungs: 17 % of slices below).
MIN_LUNG_HEIGHT = 0.35
#: An image whose grey levels vary less than this (standard deviation) is blank.
MIN_CONTRAST = 0.02
#: Plausible share of the image covered by both lungs after the hull filling (Montgomery
#: masks: 0.10-0.40; tightly cropped pediatric films filled to their hulls reach 0.7).
LUNG_AREA_RANGE = (0.05, 0.75)
#: Where the shipped weights and their card are.
WEIGHTS_DIR = Path(__file__).resolve().parent / "lung_field"

_DEFAULT_ARCH: dict[str, Any] = {
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "num_res_units": 1,
}


def build_network(**arch: Any) -> nn.Module:
    """The untrained segmenter: a 2-D MONAI U-Net, one input and one output channel (logits)."""
    from monai.networks.nets import UNet

    spec = {**_DEFAULT_ARCH, **arch}
    net: nn.Module = UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(spec["channels"]),
        strides=tuple(spec["strides"]),
        num_res_units=int(spec["num_res_units"]),
    )
    return net


def read_card(folder: Path = WEIGHTS_DIR) -> dict[str, Any]:
    """The segmenter's card (``card.json``).

    Raises:
        ModelLoadError: no card in ``folder``.
    """
    path = folder / "card.json"
    if not path.is_file():
        raise ModelLoadError(f"no lung-field segmenter in {folder} (card.json missing)")
    card: dict[str, Any] = json.loads(path.read_text())
    return card


@functools.lru_cache(maxsize=4)
def _network(folder: str, device: str) -> nn.Module:
    from safetensors.torch import load_file

    from ai_engine.checkpoints import sha256_of

    root = Path(folder)
    card = read_card(root)
    weights = root / "weights.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"no lung-field segmenter weights in {root}")
    digest = sha256_of(weights)
    if digest != card.get("weights_sha256"):
        raise ModelLoadError(
            f"lung-field segmenter weights in {root} do not match their card's sha256"
        )
    net = build_network(**card.get("architecture", {}))
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    return net.to(device)


@torch.no_grad()
def lung_probabilities(
    images: Sequence[npt.ArrayLike],
    device: str | torch.device = "cpu",
    folder: Path = WEIGHTS_DIR,
    batch_size: int = 16,
) -> npt.NDArray[np.float32]:
    """(N, 128, 128) lung probabilities of greyscale radiographs in [0, 1] (any size)."""
    net = _network(str(folder), str(device))
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack(
            [
                model_input(np.asarray(img, np.float32), INPUT_SIZE)
                for img in images[start : start + batch_size]
            ]
        ).to(device)
        out.append(torch.sigmoid(net(batch).float())[:, 0].cpu().numpy())
    if not out:
        return np.zeros((0, *INPUT_SIZE), np.float32)
    return np.concatenate(out).astype(np.float32)


def _convex_fill(component: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """``component`` with its convex hull filled in (pixel centres inside the hull)."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.argwhere(component)
    if len(points) < 4:
        return component
    try:
        hull = ConvexHull(points)
    except QhullError:  # all points on a line
        return component
    (r0, c0), (r1, c1) = points.min(0), points.max(0) + 1
    rows, cols = np.mgrid[r0:r1, c0:c1]
    grid = np.c_[rows.ravel(), cols.ravel()].astype(np.float64)
    # inside every facet's half-plane (normal . p + offset <= 0), with a little tolerance
    inside = (grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9).all(axis=1)
    out = component.copy()
    out[r0:r1, c0:c1] |= inside.reshape(rows.shape)
    return out


def clean_mask(
    probability: npt.NDArray[np.floating[Any]],
) -> tuple[npt.NDArray[np.bool_], int, str | None]:
    """The lung field from one probability map: (mask, number of lungs found, reason or None).

    Probability above 0.5; an opening (2 pixels of the 128-pixel map) cuts thin leaks; holes
    filled. Then per side of the image's vertical midline (each lung on its side; two lungs
    the segmenter joined across the mediastinum are split there): the largest component of at
    least `MIN_LUNG_SHARE` of the image, filled to its convex hull within its side, so that a
    consolidation the segmenter left out of the lung's outline (a "bite" on its border) is
    inside the field again (on a projection radiograph, lung also lies behind the heart's
    border). A side without a lung, or with one smaller than `MIN_SIDE_RATIO` of the other's
    (a white-out the segmenter does not see as lung, or a dark corner it took for one), gets
    the other lung mirrored about the midline instead: a finding there must stay inside the
    field.
    ``reason`` is set when no plausible field is left (see the module docstring).
    """
    binary = ndimage.binary_opening(probability > 0.5, iterations=2)
    binary = ndimage.binary_fill_holes(binary)
    rows, cols = binary.shape
    half = cols // 2
    sides: list[npt.NDArray[np.bool_] | None] = []
    for lo_col, hi_col in ((0, half), (half, cols)):
        side = np.zeros_like(binary, bool)
        side[:, lo_col:hi_col] = binary[:, lo_col:hi_col]
        labels, n = ndimage.label(side)
        if n == 0:
            sides.append(None)
            continue
        sizes = ndimage.sum_labels(side, labels, index=np.arange(1, n + 1))
        biggest = int(np.argmax(sizes))
        if sizes[biggest] < MIN_LUNG_SHARE * binary.size:
            sides.append(None)
            continue
        lung = _convex_fill(labels == biggest + 1)
        lung[:, :lo_col] = False
        lung[:, hi_col:] = False
        sides.append(lung)
    areas = [0 if lung is None else int(lung.sum()) for lung in sides]
    big = int(np.argmax(areas))
    biggest_lung, other = sides[big], sides[1 - big]
    if biggest_lung is None:
        return np.zeros_like(binary, bool), 0, "no lung field found in the image"
    mask = biggest_lung
    found = 1
    if other is not None and areas[1 - big] >= MIN_SIDE_RATIO * areas[big]:
        mask = mask | other
        found = 2
    else:  # mirror the lung found onto the other side
        mask = mask | mask[:, ::-1]
    lung_rows = np.nonzero(mask.any(axis=1))[0]
    height = (lung_rows.max() - lung_rows.min() + 1) / rows
    if height < MIN_LUNG_HEIGHT:
        return (
            np.zeros_like(binary, bool),
            found,
            f"no plausible lung field found (the segmented lungs span {height:.0%} of the "
            f"image's height; lungs span at least {MIN_LUNG_HEIGHT:.0%})",
        )
    share = float(mask.sum()) / mask.size
    lo, hi = LUNG_AREA_RANGE
    if not lo <= share <= hi:
        return (
            np.zeros_like(binary, bool),
            found,
            f"no plausible lung field found (segmented lungs cover {share:.0%} of the image; "
            f"expected {lo:.0%}-{hi:.0%})",
        )
    return mask, found, None


def _to_size(mask: npt.NDArray[np.bool_], shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """``mask`` resized to ``shape`` (rows, cols), nearest neighbour (undoing the squash)."""
    if mask.shape == shape:
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (shape[1], shape[0]), Image.Resampling.NEAREST
    )
    return np.asarray(img) > 127


def lung_fields(
    images: Sequence[npt.ArrayLike],
    device: str | torch.device = "cpu",
    folder: Path = WEIGHTS_DIR,
) -> list[RegionMask]:
    """One `RegionMask` per radiograph, at the radiograph's resolution (see module docstring)."""
    arrays = [np.asarray(img, np.float32) for img in images]
    probabilities = lung_probabilities(arrays, device, folder)
    regions = []
    for image, probability in zip(arrays, probabilities, strict=True):
        mask, lungs, reason = clean_mask(probability)
        if float(image.std()) < MIN_CONTRAST:  # a blank exposure: no anatomy to segment
            mask, reason = np.zeros_like(mask), "no plausible lung field found (blank image)"
        shape = (int(image.shape[0]), int(image.shape[1]))
        regions.append(RegionMask(_to_size(mask, shape), reason, parts=lungs))
    return regions
