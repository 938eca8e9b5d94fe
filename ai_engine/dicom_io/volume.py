"""3D volumes: a CT/MR series of single-frame DICOM slices, and NIfTI files for research.

`read_series` reads the slices of one series, sorts them in space and returns a `Volume`
(pixels (slices, rows, cols) float32 in [0, 1], the slice headers in the same order, voxel
spacing). `read_nifti` reads a NIfTI-1/2 file (needs the optional package ``nibabel``) into
the same (slices, rows, cols) layout and orientation as an axial series from `read_series`.

Slice order (`read_series`): by the position of each slice along the slice normal, i.e.
``dot(ImagePositionPatient, row_cosines x column_cosines)`` ascending (PS3.3 C.7.6.2.1.1;
for an axial series in the usual orientation that is feet to head). All slices must share
ImageOrientationPatient; two slices at the same position (several echoes, phases or
acquisitions in one series) are refused, since they do not form one volume. Only when a slice
has no ImagePositionPatient/ImageOrientationPatient the order falls back to InstanceNumber
(logged as a warning: InstanceNumber says nothing reliable about position, and some scanners
number head to feet).

Intensities (`read_series`): every slice goes through the same pipeline as
`reader.read_image` (modality LUT / rescale, VOI LUT or window, 8-bit / 255, MONOCHROME1
inversion). The one difference is the fallback for slices without a VOI LUT or window that
are not 8-bit (typical for CT/MR without a stored window, e.g. pydicom's CT_small): they are
scaled by the minimum and maximum over *all such slices of the volume*, not per slice.
Per-slice min/max would stretch each slice on its own scale: a slice through the skull
vertex and one through the petrous bone would map the same Hounsfield value to different
grey values, an anomaly model would see intensity jumps between neighbouring slices that
are not in the patient, and a 3D model would see them as edges. A volume min/max keeps one
monotonic mapping for the whole series (the same tissue gets the same value on every slice).
Slices with a window keep their own stored window, as a radiologist would see them.

Enhanced multi-frame files (e.g. Enhanced MR Image Storage, one object with many frames):
`read_series` of that one file assembles its frames as the slices of the volume, with each
frame's position from PerFrameFunctionalGroupsSequence / PlanePositionSequence and the
orientation and pixel spacing from the shared (else the frame's) PlaneOrientationSequence and
PixelMeasuresSequence; frames are then ordered and checked like single-frame slices. A
multi-frame file among other files is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from ai_engine.dicom_io._common import valid_spacing
from ai_engine.dicom_io.reader import (
    _apply_voi,
    _check_image,
    _dcmread,
    _decode,
    _header,
    _is_monochrome1,
    _linear,
    _modality,
    _number_of_frames,
    _require_uids,
)
from ai_engine.errors import UnsupportedInputError
from ai_engine.types import FloatArray

__all__ = ["Volume", "plane_order", "read_nifti", "read_series"]

logger = logging.getLogger(__name__)

#: Slices closer than this along the normal (mm) are at "the same position".
_SAME_POSITION_MM = 1e-3
#: ImageOrientationPatient values that differ by less than this are the same orientation.
_ORIENTATION_TOLERANCE = 1e-4
#: Percentiles of the robust min/max of `read_nifti`.
NIFTI_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class Volume:
    """A CT/MR series as one volume, ready for preprocessing.

    For an enhanced multi-frame file, ``datasets`` and ``paths`` repeat its one header and
    path once per slice.

    Attributes:
        pixels: (slices, rows, cols) float32 in [0, 1], higher = brighter, slices sorted
            along the slice normal (see the module docstring).
        datasets: the slice headers (without pixel data), in the order of ``pixels``; pass
            them as ``sources`` to the volume writers.
        spacing: (slice, row, column) spacing in mm: the distance between neighbouring slice
            positions (median), then PixelSpacing; NaN where unknown.
        paths: the files, in the order of ``pixels``.
    """

    pixels: FloatArray
    datasets: tuple[Dataset, ...]
    spacing: tuple[float, float, float]
    paths: tuple[Path, ...]


def _orientation(ds: Dataset) -> npt.NDArray[np.float64] | None:
    iop = ds.get("ImageOrientationPatient")
    ipp = ds.get("ImagePositionPatient")
    if iop is None or ipp is None or len(iop) != 6 or len(ipp) != 3:
        return None
    try:
        return np.asarray([float(v) for v in iop], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _slice_positions(datasets: Sequence[Dataset]) -> npt.NDArray[np.float64] | None:
    """Position of each slice along the common slice normal, or None if a plane is missing.

    Raises:
        UnsupportedInputError: the slices differ in orientation.
    """
    orientations = []
    for ds in datasets:
        orientation = _orientation(ds)
        if orientation is None:
            return None
        orientations.append(orientation)
    first = orientations[0]
    for o in orientations[1:]:
        if np.abs(o - first).max() > _ORIENTATION_TOLERANCE:
            raise UnsupportedInputError(
                "the slices of the series differ in ImageOrientationPatient; they do not "
                "form one volume"
            )
    normal = np.cross(first[:3], first[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        raise UnsupportedInputError("ImageOrientationPatient has parallel row and column axes")
    normal /= length
    return np.asarray(
        [float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in datasets]
    )


def plane_order(datasets: Sequence[Dataset]) -> list[int] | None:
    """Order of slice headers along their normal, or None when they are not one volume.

    One volume here: single-frame slices of one Frame of Reference (present), one size and
    one orientation, each with ImagePositionPatient/ImageOrientationPatient, no two at the
    same position. This is what the volume writers (`seg_volume_writer`, `pmap_writer`)
    accept; the pipeline asks it before writing one SEG and one map for a series.

    Args:
        datasets: slice headers, in any order.

    Returns:
        Indices into ``datasets`` sorted along the slice normal, or None.
    """
    if not datasets:
        return None
    for keyword in ("FrameOfReferenceUID", "Rows", "Columns"):
        found = {str(ds.get(keyword, "") or "") for ds in datasets}
        if len(found) != 1 or found == {""}:
            return None
    if any(_number_of_frames(ds) > 1 for ds in datasets):
        return None
    try:
        positions = _slice_positions(datasets)
    except UnsupportedInputError:
        return None
    if positions is None:
        return None
    order = [int(i) for i in np.argsort(positions, kind="stable")]
    if len(order) > 1 and float(np.diff(positions[order]).min()) < _SAME_POSITION_MM:
        return None
    return order


def _order(datasets: Sequence[Dataset]) -> tuple[list[int], npt.NDArray[np.float64] | None]:
    """Slice order and the sorted positions along the normal (None for the fallback)."""
    positions = _slice_positions(datasets)
    if positions is not None:
        order = [int(i) for i in np.argsort(positions, kind="stable")]
        ordered = positions[order]
        if len(ordered) > 1 and float(np.diff(ordered).min()) < _SAME_POSITION_MM:
            raise UnsupportedInputError(
                "two slices of the series are at the same position (several echoes, phases "
                "or acquisitions?); they do not form one volume"
            )
        return order, ordered
    numbers = [ds.get("InstanceNumber") for ds in datasets]
    if any(n is None or str(n).strip() == "" for n in numbers):
        raise UnsupportedInputError(
            "cannot order the slices: a slice has neither ImagePositionPatient/"
            "ImageOrientationPatient nor InstanceNumber"
        )
    logger.warning("slices without ImagePositionPatient: ordered by InstanceNumber")
    try:
        keys = [int(float(str(n))) for n in numbers]
    except ValueError as exc:
        raise UnsupportedInputError(f"cannot order the slices: bad InstanceNumber ({exc})") from exc
    return sorted(range(len(datasets)), key=lambda i: keys[i]), None


def _slice_spacing(ordered: npt.NDArray[np.float64] | None, first: Dataset) -> float:
    if ordered is not None and len(ordered) > 1:
        steps = np.diff(ordered)
        median = float(np.median(steps))
        if float(steps.max() - steps.min()) > 0.01 * median + 1e-3:
            logger.warning(
                "uneven slice spacing (%.3f to %.3f mm); spacing reports the median",
                float(steps.min()),
                float(steps.max()),
            )
        return median
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(first.get(keyword) or "nan")
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            return value
    return math.nan


def read_series(paths: Sequence[Path]) -> Volume:
    """The single-frame greyscale slices of one series as a volume (see the module docstring).

    Args:
        paths: the files of the series, in any order.

    Returns:
        The Volume, slices sorted along the slice normal (fallback: InstanceNumber).

    Raises:
        UnsupportedInputError: no file; a file that `reader.read_image` would refuse; a
            multi-frame file among others, or one without per-frame plane positions; slices
            of different series, frames of reference, sizes or orientations; two slices at
            the same position; or slices that cannot be ordered.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise UnsupportedInputError("read_series needs at least one file")
    full: list[Dataset] = []
    for path in files:
        ds = _dcmread(path, stop_before_pixels=False)
        _require_uids(ds, path)
        _check_image(ds, path)
        if _number_of_frames(ds) > 1:
            if len(files) > 1:
                raise UnsupportedInputError(
                    f"{path}: a multi-frame file among {len(files)} files; read_series "
                    "assembles one enhanced multi-frame file or single-frame slices"
                )
            return _read_multiframe(ds, path)
        full.append(ds)
    for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"):
        found = {str(ds.get(keyword, "")) for ds in full}
        if len(found) > 1:
            raise UnsupportedInputError(
                f"the files differ in {keyword} ({len(found)} values); one series is expected"
            )
    order, ordered_positions = _order(full)
    datasets = [full[i] for i in order]
    stored = [_decode(ds, files[i], None) for ds, i in zip(datasets, order, strict=True)]

    slices: list[FloatArray | None] = []
    lo, hi = math.inf, -math.inf
    for ds, raw in zip(datasets, stored, strict=True):
        values, eight_bit_range = _modality(raw, ds, 0)
        shown = _apply_voi(values, ds, 0, _is_monochrome1(ds), eight_bit_range)
        if shown is None:  # min/max rule: over the volume, applied below
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        slices.append(shown)
    if any(s is None for s in slices):
        if hi <= lo:
            logger.warning("constant volume: all pixels are %s", lo)
        for k, (ds, raw) in enumerate(zip(datasets, stored, strict=True)):
            if slices[k] is None:
                values, _ = _modality(raw, ds, 0)
                slices[k] = _linear(values, lo, hi, _is_monochrome1(ds))
    pixels: FloatArray = np.stack([s for s in slices if s is not None]).astype(np.float32)

    row_col = valid_spacing(datasets[0].get("PixelSpacing")) or (math.nan, math.nan)
    spacing = (_slice_spacing(ordered_positions, datasets[0]), row_col[0], row_col[1])
    logger.debug(
        "read a volume of %d slices, series %s", len(datasets), datasets[0].get("SeriesInstanceUID")
    )
    return Volume(
        pixels=pixels,
        datasets=tuple(_header(ds) for ds in datasets),
        spacing=spacing,
        paths=tuple(files[i] for i in order),
    )


def _frame_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The functional group item ``keyword`` of a frame: per-frame, else shared."""
    for groups in (
        ds.get("PerFrameFunctionalGroupsSequence"),
        ds.get("SharedFunctionalGroupsSequence"),
    ):
        if not groups:
            continue
        item = groups[frame] if groups is ds.get("PerFrameFunctionalGroupsSequence") else groups[0]
        sequence = item.get(keyword)
        if sequence:
            found: Dataset = sequence[0]
            return found
    return None


def _frame_planes(ds: Dataset, path: Path) -> list[Dataset]:
    """One small header per frame with its plane, from an enhanced file's functional groups.

    Each holds ImagePositionPatient, ImageOrientationPatient, InstanceNumber (frame number)
    and, where given, PixelSpacing, SliceThickness and SpacingBetweenSlices.
    """
    n = _number_of_frames(ds)
    if len(ds.get("PerFrameFunctionalGroupsSequence") or []) != n:
        raise UnsupportedInputError(
            f"{path.name}: multi-frame file of {n} frames without a "
            "PerFrameFunctionalGroupsSequence item per frame"
        )
    planes = []
    for k in range(n):
        position = _frame_item(ds, k, "PlanePositionSequence")
        orientation = _frame_item(ds, k, "PlaneOrientationSequence")
        if position is None or orientation is None:
            raise UnsupportedInputError(
                f"{path.name}: frame {k + 1} has no PlanePositionSequence / "
                "PlaneOrientationSequence; its frames cannot be placed in a volume"
            )
        plane = Dataset()
        plane.ImagePositionPatient = position.ImagePositionPatient
        plane.ImageOrientationPatient = orientation.ImageOrientationPatient
        plane.InstanceNumber = k + 1
        measures = _frame_item(ds, k, "PixelMeasuresSequence")
        for keyword in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"):
            if measures is not None and keyword in measures:
                setattr(plane, keyword, measures.get(keyword))
        planes.append(plane)
    return planes


def _read_multiframe(ds: Dataset, path: Path) -> Volume:
    """An enhanced multi-frame file as a volume (see the module docstring)."""
    planes = _frame_planes(ds, path)
    order, ordered_positions = _order(planes)
    stored = _decode(ds, path, None)
    if stored.ndim == 2:
        stored = stored[np.newaxis]
    invert = _is_monochrome1(ds)
    slices: list[FloatArray | None] = []
    lo, hi = math.inf, -math.inf
    for k in order:
        values, eight_bit_range = _modality(stored[k], ds, k)
        shown = _apply_voi(values, ds, k, invert, eight_bit_range)
        if shown is None:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        slices.append(shown)
    for j, k in enumerate(order):
        if slices[j] is None:
            values, _ = _modality(stored[k], ds, k)
            slices[j] = _linear(values, lo, hi, invert)
    pixels: FloatArray = np.stack([s for s in slices if s is not None]).astype(np.float32)
    first = planes[order[0]]
    row_col = valid_spacing(first.get("PixelSpacing")) or (math.nan, math.nan)
    header = _header(ds)
    logger.debug("read a multi-frame volume of %d frames from %s", len(order), path.name)
    return Volume(
        pixels=pixels,
        datasets=(header,) * len(order),
        spacing=(_slice_spacing(ordered_positions, first), row_col[0], row_col[1]),
        paths=(path,) * len(order),
    )


def _robust_unit(data: npt.NDArray[np.floating[Any]]) -> FloatArray:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(data.shape, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(finite, NIFTI_PERCENTILES))
    if hi <= lo:
        logger.warning("NIfTI volume is (nearly) constant")
        return np.zeros(data.shape, dtype=np.float32)
    clean = np.where(np.isfinite(data), data, lo)
    scaled: FloatArray = np.clip((clean - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return scaled


def read_nifti(path: Path) -> FloatArray:
    """A NIfTI-1/2 volume as float32 (slices, rows, cols) in [0, 1].

    Orientation: the image is first turned to the closest canonical RAS+ orientation
    (``nibabel.as_closest_canonical``: array axes i, j, k towards patient Right, Anterior,
    Superior; only axis permutations and flips, no resampling). It is then returned as
    ``data[k, ::-1 (j), ::-1 (i)]``: slices from inferior to superior, rows from anterior to
    posterior, columns from the patient's right to left. That is the layout of an axial
    DICOM series from `read_series` (LPS: columns towards L, rows towards P, slices towards
    S), shown in the radiological convention (patient's right on the image's left).

    Intensities: the stored values after the header's scl_slope/scl_inter are scaled to
    [0, 1] by a robust min/max, the 0.5th and 99.5th percentiles of the finite voxels
    (values outside are clipped; NaN/inf become 0). A constant image gives zeros.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        The volume; a 2D image gives one slice.

    Raises:
        UnsupportedInputError: nibabel is not installed, the file is not a readable NIfTI
            image, or it has more than three non-singleton dimensions (a time series).
    """
    path = Path(path)
    try:
        import nibabel as nib  # optional dependency: imported only when used
    except ImportError as exc:
        raise UnsupportedInputError(
            f"{path}: reading NIfTI needs the optional package nibabel (pip install nibabel)"
        ) from exc
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types on bad files
        raise UnsupportedInputError(
            f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(image, nib.Nifti1Image):
        raise UnsupportedInputError(f"{path}: not a NIfTI image ({type(image).__name__})")
    canonical = nib.as_closest_canonical(image)  # type: ignore[no-untyped-call]
    data = np.asarray(canonical.get_fdata(dtype=np.float64))
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise UnsupportedInputError(
            f"{path}: NIfTI image of shape {data.shape}; a 2D or 3D image is expected"
        )
    logger.debug("read a NIfTI volume of shape %s", data.shape)
    return _robust_unit(data.transpose(2, 1, 0)[:, ::-1, ::-1])
