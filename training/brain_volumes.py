"""Brain-extracted, normalised FLAIR slices of a manifest, as the node prepares an MR series.

The LGG set stores each patient's FLAIR stack as single PNG slices with their position
(manifest column ``slice``, 1-based). `prepare` rebuilds each patient's volume (missing
positions, the near-empty slices the data set dropped, become empty slices), runs
`ai_engine.anatomy.brain.brain_masks` with the spacing of `assumed_spacing` and normalises
each volume inside its brain (`normalise_in_brain`), the same steps the node applies to a
DICOM series. The masks are cached on disk (``cache_dir``, default
``~/.cache/ai-anomaly-node/brain-masks``), keyed by the sha256 of the volume and its spacing,
so training and evaluation pay HD-BET once per volume.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ai_engine.anatomy import RegionMask
from ai_engine.anatomy.brain import assumed_spacing, brain_masks, normalise_in_brain
from training.data import Item, ManifestError, load_image

logger = logging.getLogger(__name__)

#: Bump when the mask computation changes, so old cache entries are not reused.
MASK_VERSION = "hdbet-fold0-nomirror-1"


def default_cache_dir() -> Path:
    """``$AI_NODE_CACHE/brain-masks`` or ``~/.cache/ai-anomaly-node/brain-masks``."""
    base = os.environ.get("AI_NODE_CACHE") or str(Path.home() / ".cache" / "ai-anomaly-node")
    return Path(base) / "brain-masks"


@dataclass(frozen=True)
class PreparedSlice:
    """One slice ready for a brain model: normalised pixels and its brain."""

    pixels: npt.NDArray[np.float32]  # (H, W) in [0, 1], 0 outside the brain
    region: RegionMask


def _cached_masks(volume: np.ndarray, spacing: Sequence[float], cache_dir: Path) -> np.ndarray:
    key = hashlib.sha256()
    key.update(MASK_VERSION.encode())
    key.update(np.asarray(spacing, dtype=np.float64).tobytes())
    key.update(str(volume.shape).encode())
    key.update(np.ascontiguousarray(volume, dtype=np.float32).tobytes())
    path = cache_dir / f"{key.hexdigest()}.npz"
    if path.is_file():
        return np.load(path)["mask"]
    masks = np.stack([r.mask for r in brain_masks(volume, spacing)])
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, mask=masks)
    tmp.replace(path)
    return masks


def prepare(items: Sequence[Item], cache_dir: Path | None = None) -> dict[Path, PreparedSlice]:
    """Brain-extracted, normalised slices of ``items``, by image path.

    Raises:
        ManifestError: an item without ``patient_id`` or ``slice``.
    """
    cache = cache_dir or default_cache_dir()
    by_patient: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if not item.patient_id or item.slice is None:
            raise ManifestError(f"{item.path.name}: brain preprocessing needs patient_id and slice")
        by_patient[item.patient_id].append(item)
    out: dict[Path, PreparedSlice] = {}
    for n, (patient, rows) in enumerate(sorted(by_patient.items()), start=1):
        positions = [int(r.slice) for r in rows if r.slice is not None]
        first, last = min(positions), max(positions)
        images = {int(r.slice): load_image(r.path) for r in rows if r.slice is not None}
        shape = next(iter(images.values())).shape
        volume = np.zeros((last, *shape), dtype=np.float32)  # positions 1..last
        for position, pixels in images.items():
            volume[position - 1] = pixels
        spacing = assumed_spacing(last, shape[0])
        masks = _cached_masks(volume, spacing, cache)
        regions = [
            RegionMask(m) if m.any() else RegionMask(m, "no brain found in this slice")
            for m in masks
        ]
        normalised = normalise_in_brain(volume, regions)
        for r in rows:
            k = int(r.slice) - 1  # type: ignore[arg-type]
            out[r.path] = PreparedSlice(normalised[k], regions[k])
        logger.info(
            "brain volume %d/%d (%s): slices %d..%d", n, len(by_patient), patient, first, last
        )
    return out
