"""Small helpers shared by the DICOM readers and writers of this package (internal)."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import Dataset, config
from pydicom.multival import MultiValue
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import validate_value

from ai_engine.dicom_io import markers
from ai_engine.errors import UnsupportedInputError
from ai_engine.types import AlgorithmInfo

logger = logging.getLogger(__name__)

#: Text appended to every output SeriesDescription (the prefix says "RESEARCH USE ONLY").
RESEARCH_SUFFIX = "(not for clinical use)"


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
        e.g. "RESEARCH USE ONLY: AI anomaly region (not for clinical use)".

    Raises:
        ValueError: when the result would not fit in 64 characters.
    """
    text = f"{markers.OUTPUT_SERIES_PREFIX} {kind} {RESEARCH_SUFFIX}"
    if len(text) > 64:
        raise ValueError(f"SeriesDescription longer than 64 characters: {text!r}")
    return text


def output_identity(
    algorithm: AlgorithmInfo,
    kind: str,
    *,
    series_instance_uid: str | None,
    series_number: int,
    instance_number: int,
) -> dict[str, Any]:
    """How an object the engine writes names itself: highdicom keyword arguments.

    One owner for the identity every result carries (SEG, Parametric Map, SR): a new
    SOPInstanceUID, the series (a new one unless given), the node as Manufacturer, the model
    as ManufacturerModelName / SoftwareVersions, the first 16 hex digits of its weights'
    sha256 as DeviceSerialNumber ("unknown" without weights) and the research-use
    SeriesDescription of ``kind``.
    """
    return {
        "series_instance_uid": series_instance_uid or new_uid(),
        "series_number": series_number,
        "sop_instance_uid": new_uid(),
        "instance_number": instance_number,
        "manufacturer": markers.OUTPUT_MANUFACTURER,
        "manufacturer_model_name": algorithm.name,
        "software_versions": algorithm.version,
        "device_serial_number": algorithm.weights_sha256[:16] or "unknown",
        "series_description": series_description(kind),
    }


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


#: The only top-level attributes of a source that reach our outputs (what the SEG, Parametric
#: Map, SC and SR IODs take from their source: patient, study, series references, image
#: geometry). Anything else the source carries, private elements and arbitrary sequences
#: included, is never copied (a 100-deep sequence in a source once reached the PACS).
SOURCE_ALLOW_LIST: frozenset[str] = frozenset(
    {
        # SOP common, references
        "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
        "FrameOfReferenceUID", "PositionReferenceIndicator", "SeriesNumber", "InstanceNumber",
        "Modality", "BodyPartExamined", "Laterality", "ImageLaterality",
        # patient and study (Type 2 ones are added empty when missing)
        "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
        "PatientAge", "PatientWeight", "PatientSize", "PatientIdentityRemoved",
        "DeidentificationMethod", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
        "ReferringPhysicianName", "StudyDescription",
        # image geometry and pixel description (read by the writers, never copied blindly)
        "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation",
        "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelSpacing",
        "ImagerPixelSpacing", "SliceThickness", "SpacingBetweenSlices", "ImagePositionPatient",
        "ImageOrientationPatient", "PatientOrientation", "RecognizableVisualFeatures",
        "BurnedInAnnotation",
    }
)  # fmt: skip

#: Enhanced multi-frame objects: the functional group macros the writers read (plane
#: position and orientation, pixel measures), copied one level deep without their own
#: sequences.
_FUNCTIONAL_GROUP_MACROS = (
    "PixelMeasuresSequence",
    "PlanePositionSequence",
    "PlaneOrientationSequence",
    "PixelValueTransformationSequence",
    "FrameVOILUTSequence",
)

_DATE_RE = re.compile(r"(\d{4})[-./]?(\d{2})[-./]?(\d{2})")
_TIME_RE = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?")
_SEX_VALUES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}
#: Character sets that need no declaration (the default repertoire).
_DEFAULT_CHARSETS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


def _copy_functional_groups(sequence: object) -> Sequence[Dataset]:
    items: list[Dataset] = []
    for item in sequence or ():  # type: ignore[attr-defined]
        copy = Dataset()
        for macro in _FUNCTIONAL_GROUP_MACROS:
            inner = item.get(macro) if isinstance(item, Dataset) else None
            if not inner:
                continue
            flat = Dataset()
            for elem in inner[0]:
                if elem.VR != "SQ":
                    flat.add(deepcopy(elem))
            setattr(copy, macro, [flat])
        items.append(copy)
    return items


def sanitise_date(value: object) -> str:
    """A DA value (YYYYMMDD) from a source date written in a common illegal form, else "".

    ``1961-07-04`` and ``1961.07.04`` become ``19610704``; anything unreadable becomes the
    empty (Type 2: unknown) value, so a strict writer never fails on it.
    """
    match = _DATE_RE.fullmatch(str(value or "").strip())
    return "".join(match.groups()) if match else ""


def sanitise_time(value: object) -> str:
    """A TM value (HHMMSS[.FFFFFF]) from e.g. ``10:30:00``, else ""."""
    match = _TIME_RE.fullmatch(str(value or "").strip())
    if match is None:
        return ""
    hh, mm, ss, frac = match.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        return ""
    fraction = (frac or "") if ss else ""
    return f"{hh}{mm or ''}{ss or ''}{fraction}"


def sanitise_sex(value: object) -> str:
    """PatientSex as M, F or O (``Female`` -> F), else "" (unknown)."""
    return _SEX_VALUES.get(str(value or "").strip().upper(), "")


def _value(source: Dataset, keyword: str) -> object:
    """The decoded value of an element, or None when it cannot be decoded (tolerant read)."""
    try:
        return source[keyword].value
    except Exception:  # noqa: BLE001 - any decoding failure of a hostile value: drop it
        return None


#: Attributes kept even when their value does not validate (the writers need them; a bad
#: UID or pixel description fails the image with a clear error instead).
_KEEP_ALWAYS = frozenset(
    {"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"}
)


#: VRs whose values are checked as text (numbers in binary VRs are already numbers; person
#: names are left to highdicom, which only warns).
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})


def _drop_invalid_values(copy: Dataset) -> None:
    """Strict write: empty (Type 2) or remove a value its VR does not allow.

    E.g. a 20-character AccessionNumber (SH), a DS that is not a number.
    """
    for elem in list(copy):
        if elem.VR not in _TEXT_VRS or elem.keyword in _KEEP_ALWAYS or elem.value in (None, ""):
            continue
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        try:
            for value in values:
                validate_value(elem.VR, str(value), config.RAISE)
        except (ValueError, TypeError):
            if elem.keyword in _TYPE2_FROM_SOURCE:
                copy[elem.tag].value = None
            else:
                del copy[elem.tag]


def prepare_source(source: Dataset) -> PreparedSource:
    r"""A copy of a source image's header that highdicom accepts as a derivation source.

    Tolerant reading meets strict writing here. Only the attributes of `SOURCE_ALLOW_LIST`
    are copied (values decoded with the source's character set; none of the source's
    sequences except the functional-group macros of `_FUNCTIONAL_GROUP_MACROS`, one level
    deep), and what a strict writer would refuse is repaired or left empty:

    * missing Type 2 patient/study attributes are added empty (highdicom raises
      AttributeError on them); dates and times in common illegal forms (``1961-07-04``,
      ``10:30:00``) are rewritten as DA/TM, unreadable ones emptied; PatientSex ``Female``
      becomes ``F``, an unknown one empty;
    * a source in another character set than the default repertoire (e.g.
      ``\ISO 2022 IR 149``) is written as UTF-8 (``ISO_IR 192``), its values decoded;
    * a missing Modality becomes ``OT`` (other);
    * any other value its VR does not allow is emptied (Type 2) or removed;
    * a PatientAge that is not an Age String is repaired (`repair_age`) or dropped;
    * a PixelSpacing that is not two positive numbers (e.g. 0 and 0 in Clunie's RG1 sample)
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
    for keyword in sorted(SOURCE_ALLOW_LIST):
        if keyword not in source:
            continue
        value = _value(source, keyword)
        elem = source[keyword] if value is not None else None
        if elem is None or elem.VR == "SQ":
            continue
        try:
            copy.add_new(elem.tag, elem.VR, deepcopy(value))
        except (TypeError, ValueError):
            continue
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if groups in source:
            setattr(copy, groups, _copy_functional_groups(_value(source, groups)))
    if hasattr(source, "file_meta"):
        copy.file_meta = deepcopy(source.file_meta)
    charsets = source.get("SpecificCharacterSet")
    names = [charsets] if isinstance(charsets, str) else list(charsets or [])
    if any(str(n).strip() not in _DEFAULT_CHARSETS for n in names):
        copy.SpecificCharacterSet = "ISO_IR 192"
    for keyword in ("PatientBirthDate", "StudyDate"):
        if keyword in copy:
            setattr(copy, keyword, sanitise_date(copy[keyword].value))
    if "StudyTime" in copy:
        copy.StudyTime = sanitise_time(copy.StudyTime)
    if "PatientSex" in copy:
        copy.PatientSex = sanitise_sex(copy.PatientSex)
    if not str(copy.get("Modality", "") or "").strip():
        copy.Modality = "OT"
    _drop_invalid_values(copy)
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
