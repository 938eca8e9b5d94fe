"""Small helpers shared by the DICOM readers and writers of this package (internal)."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.uid import UID, generate_uid

from ai_engine.dicom_io import markers
from ai_engine.errors import UnsupportedInputError

logger = logging.getLogger(__name__)

#: Text appended to every output SeriesDescription.
RESEARCH_SUFFIX = f"({markers.RESEARCH_USE_NOTICE})"


def new_uid() -> UID:
    """A new, globally unique UID (pydicom's root + random suffix).

    Returns:
        The UID.
    """
    return generate_uid()


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (preamble + file meta), atomically.

    The file is written to a temporary name beside ``path`` and renamed, so a reader that
    watches the folder never sees half a file. Parent folders are created.

    Args:
        ds: dataset with ``file_meta.TransferSyntaxUID`` set (all datasets made by this
            package have it; highdicom objects too).
        path: destination file.

    Returns:
        ``path``.

    Raises:
        ValueError: when ``ds`` has no file meta transfer syntax.
    """
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None or "TransferSyntaxUID" not in file_meta:
        raise ValueError("dataset has no file_meta.TransferSyntaxUID; cannot write a DICOM file")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.debug("wrote %s", ds.get("SOPInstanceUID", "?"))
    return path


def series_description(kind: str) -> str:
    """SeriesDescription of an output, as CONTRACTS.md prescribes.

    The model name and version are not in it (SeriesDescription is LO, at most 64 characters);
    they are in ManufacturerModelName and SoftwareVersions.

    Args:
        kind: "region", "map" or "report".

    Returns:
        e.g. "AI anomaly region (research use only, not for clinical use)".

    Raises:
        ValueError: when the result would not fit in 64 characters.
    """
    text = f"{markers.OUTPUT_SERIES_PREFIX} {kind} {RESEARCH_SUFFIX}"
    if len(text) > 64:
        raise ValueError(f"SeriesDescription longer than 64 characters: {text!r}")
    return text


#: Type 2 patient/study attributes highdicom copies from a source and fails on when absent.
_TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


class PreparedSource(Dataset):
    """A source header made by `prepare_source`; the writers treat it as read-only.

    `prepare_source` returns one of these as it is, so a caller that writes several objects
    from one source (``pipeline.run``: binary SEG, FRACTIONAL SEG or Parametric Map, SR)
    prepares it once and passes the prepared copy to every writer.
    """


def prepare_source(source: Dataset) -> PreparedSource:
    """A copy of a source image's header that highdicom accepts as a derivation source.

    Tolerant reading meets strict writing here: the copy has no pixel data; missing Type 2
    patient/study attributes are added empty (highdicom raises AttributeError on them);
    a PatientAge that is not an Age String is repaired (`repair_age`) or dropped;
    a PixelSpacing that is not two positive numbers (e.g. 0 and 0 in Clunie's RG1 sample)
    is removed, so highdicom does not copy an invalid one into the output.

    Args:
        source: the source image dataset (header or full), or a `PreparedSource`, which is
            returned as it is (it is prepared already).

    Returns:
        A new dataset (``source`` is not changed), or ``source`` itself when it is a
        `PreparedSource`.

    Raises:
        ValueError: the source lacks a UID that any reference needs.
    """
    if isinstance(source, PreparedSource):
        return source
    missing = [
        k
        for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        if not source.get(k)
    ]
    if missing:
        raise ValueError(f"source image has no {', '.join(missing)}")
    copy = PreparedSource()
    for elem in source:
        if elem.tag.group != 0x7FE0:
            copy.add(deepcopy(elem))
    if hasattr(source, "file_meta"):
        copy.file_meta = deepcopy(source.file_meta)
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in copy:
            setattr(copy, keyword, None)
    if "PixelSpacing" in copy and valid_spacing(copy.PixelSpacing) is None:
        del copy.PixelSpacing
    if "PatientAge" in copy:
        age = repair_age(copy.PatientAge)
        if age is None:
            del copy.PatientAge
        else:
            copy.PatientAge = age
    return copy


def repair_age(value: object) -> str | None:
    """A valid Age String (nnnD/W/M/Y) from a source's PatientAge, or None.

    Some sources write a bare number ("81"); highdicom copies it into the SEG, and dciodvfy
    reports an error. A bare number of at most three digits is read as years.

    Args:
        value: the source value.

    Returns:
        e.g. "081Y", the value itself when already valid, or None when it cannot be read.
    """
    text = str(value or "").strip().upper()
    if re.fullmatch(r"\d{3}[DWMY]", text):
        return text
    if re.fullmatch(r"\d{1,3}", text):
        return f"{int(text):03d}Y"
    if re.fullmatch(r"\d{1,3}[DWMY]", text):
        return f"{int(text[:-1]):03d}{text[-1]}"
    return None


def valid_spacing(value: object) -> tuple[float, float] | None:
    """Two positive finite numbers from a PixelSpacing-like value, else None.

    Args:
        value: e.g. ``ds.get("PixelSpacing")``.

    Returns:
        (row spacing, column spacing) in mm, or None.
    """
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        values = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values[0], values[1]


def require_frame_of_reference(sources: Sequence[Dataset], what: str) -> None:
    """Check that single-frame sources of one study, series and frame of reference have planes.

    Args:
        sources: source slice headers.
        what: the object to be written, for the message (e.g. "a Parametric Map").

    Raises:
        UnsupportedInputError: a source without FrameOfReferenceUID, ImagePositionPatient or
            ImageOrientationPatient (a projection radiograph: use a FRACTIONAL SEG), a
            multi-frame source, a repeated source, or sources that differ in study, series
            or frame of reference.
    """
    for src in sources:
        uid = src.get("SOPInstanceUID", "?")
        if not src.get("FrameOfReferenceUID"):
            raise UnsupportedInputError(
                f"source {uid} (Modality {src.get('Modality', '?')}) has no Frame of Reference; "
                f"{what} needs one (for projection radiographs write a FRACTIONAL SEG instead)"
            )
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient") if not src.get(k)]
        if missing:
            raise UnsupportedInputError(
                f"source {uid} has no {' or '.join(missing)}; {what} needs the slice's plane"
            )
        if int(src.get("NumberOfFrames", 1) or 1) > 1:
            raise UnsupportedInputError(
                f"source {uid} is multi-frame; {what} is written from single-frame slices"
            )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        found = {str(s.get(keyword)) for s in sources}
        if len(found) > 1:
            raise UnsupportedInputError(f"sources of {what} differ in {keyword}: {sorted(found)}")
    uids = [str(s.get("SOPInstanceUID")) for s in sources]
    if len(set(uids)) != len(uids):
        raise UnsupportedInputError(f"a source slice is given twice for {what}")


def laterality_from_sources(sources: Sequence[Dataset]) -> str:
    """General Series Laterality for an output derived from ``sources``.

    Args:
        sources: the source headers.

    Returns:
        "R" or "L" when every source that states a side (Laterality, else ImageLaterality)
        states the same one; "" (Type 2: unknown) otherwise.
    """
    sides = set()
    for src in sources:
        side = str(src.get("Laterality", "") or src.get("ImageLaterality", "") or "").upper()
        if side:
            sides.add(side)
    if len(sides) == 1 and sides <= {"R", "L"}:
        return sides.pop()
    return ""


def check_unit_interval(name: str, array: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """A finite float array in [0, 1] as float32; values within 1e-6 outside are clipped.

    Args:
        name: what the array is, for the message.
        array: the values.

    Returns:
        A float32 copy clipped to [0, 1].

    Raises:
        ValueError: not a float array, NaN/infinite values, or values outside [0, 1].
    """
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, not {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has NaN or infinite values")
    tolerance = 1e-6
    if array.size and (array.min() < -tolerance or array.max() > 1 + tolerance):
        raise ValueError(f"{name} must lie in [0, 1]; found [{array.min()}, {array.max()}]")
    clipped: npt.NDArray[np.float32] = np.clip(array, 0.0, 1.0).astype(np.float32)
    return clipped
