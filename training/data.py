"""Manifests and image loading for training and evaluation.

A manifest is a CSV with at least ``path, split, label`` (see ../shared/data/README.md);
paths are relative to the manifest's folder. Images are PNG (8-bit: value/255) or DICOM
(read by ai_engine.dicom_io.reader); both then go through ai_engine.transforms.model_input,
the same preprocessing the node applies.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ai_engine.transforms import model_input

REQUIRED_COLUMNS = ("path", "split", "label")


class ManifestError(ValueError):
    """A manifest that cannot be used, with the reason."""


@dataclass(frozen=True)
class Item:
    """One manifest row."""

    path: Path
    split: str
    label: int
    mask_path: Path | None
    patient_id: str
    age: str
    sex: str
    view: str
    slice: int | None = None  # position in the patient's volume (manifest column "slice")
    #: boxes ``[x0, y0, x1, y1]`` in the image's pixels (manifest column "bbox": a JSON list
    #: of ``{"x", "y", "w", "h"}``, as the NIH sets carry them)
    boxes: tuple[tuple[float, float, float, float], ...] = ()


def _boxes(raw: str, where: str) -> tuple[tuple[float, float, float, float], ...]:
    if not raw.strip():
        return ()
    try:
        entries = json.loads(raw)
        return tuple(
            (
                float(b["x"]),
                float(b["y"]),
                float(b["x"]) + float(b["w"]),
                float(b["y"]) + float(b["h"]),
            )
            for b in entries
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise ManifestError(f"{where}: bbox {raw[:80]!r} is not a JSON list of x, y, w, h") from exc


def read_manifest(manifest: Path, split: str | None = None) -> list[Item]:
    """Rows of ``manifest`` (optionally only ``split``), paths made absolute.

    Raises:
        ManifestError: missing file or columns, bad label, or a listed image missing.
    """
    if not manifest.is_file():
        raise ManifestError(f"manifest {manifest} does not exist")
    root = manifest.resolve().parent
    with manifest.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"manifest {manifest} lacks column(s) {', '.join(missing)}")
        items = []
        for line_no, row in enumerate(reader, start=2):
            if split is not None and row["split"] != split:
                continue
            try:
                label = int(row["label"])
            except ValueError:
                raise ManifestError(
                    f"{manifest}:{line_no}: label {row['label']!r} is not 0 or 1"
                ) from None
            if label not in (0, 1):
                raise ManifestError(f"{manifest}:{line_no}: label {label} is not 0 or 1")
            path = root / row["path"]
            if not path.is_file():
                raise ManifestError(f"{manifest}:{line_no}: image {path} does not exist")
            mask = (row.get("mask_path") or "").strip()
            items.append(
                Item(
                    path=path,
                    split=row["split"],
                    label=label,
                    mask_path=root / mask if mask else None,
                    patient_id=row.get("patient_id", ""),
                    age=row.get("age", "") or "",
                    sex=row.get("sex", "") or "",
                    view=row.get("view", "") or "",
                    slice=int(row["slice"]) if (row.get("slice") or "").strip() else None,
                    boxes=_boxes(row.get("bbox") or "", f"{manifest}:{line_no}"),
                )
            )
    return items


def load_items(
    items: list[Item],
    image_size: tuple[int, int],
    anatomy: str = "",
    volumes: list[Item] | None = None,
) -> torch.Tensor:
    """(N, 1, H, W) model inputs for manifest items with the preprocessing the node applies.

    ``anatomy`` is the card's (`ai_engine.anatomy`): "brain" rebuilds each patient's volume
    from ``volumes`` (default: ``items``; pass the whole split so that a subset, e.g. its
    normal slices, is cut from complete volumes), extracts and normalises the brain
    (`training.brain_volumes.prepare`); "" reads each image as it is (`load_batch`).
    """
    if anatomy == "brain":
        from training.brain_volumes import prepare

        if not items:
            return torch.empty(0, 1, *image_size)
        prepared = prepare(volumes or items)
        return torch.stack([model_input(prepared[i.path].pixels, image_size) for i in items])
    return load_batch([i.path for i in items], image_size)


def load_regions(
    items: list[Item], image_size: tuple[int, int], anatomy: str
) -> torch.Tensor | None:
    """(N, 1, H, W) bool anatomy regions of ``items`` at the model size, or None.

    For a per-image anatomy (``lungs``: `ai_engine.anatomy.find_regions`), as the node finds
    them; an image without a plausible region gets an empty one (scored 0, as the node does
    not flag an image it does not analyse). None for ``""`` and ``brain`` (whose region is
    already in its input: 0 outside the brain).
    """
    from ai_engine.anatomy import find_regions, region_tensor

    if anatomy in ("", "brain"):
        return None
    found = find_regions(anatomy, [load_image(i.path) for i in items]) or []
    return region_tensor([r.mask for r in found], image_size)


def load_image(path: Path) -> np.ndarray:
    """PNG or DICOM as float32 in [0, 1], greyscale, higher = brighter (the engine's reader)."""
    from ai_engine.dicom_io.reader import read_image, read_png

    if path.suffix.lower() == ".png":
        return read_png(path)
    return read_image(path).pixels


def load_mask(path: Path) -> np.ndarray:
    """Binary mask (H, W) bool from a PNG."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 0


def load_batch(paths: list[Path], image_size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) model inputs for ``paths``."""
    if not paths:
        return torch.empty(0, 1, *image_size)
    return torch.stack([model_input(load_image(p), image_size) for p in paths])
